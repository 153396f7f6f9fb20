from ucpush.cli import main

main()
