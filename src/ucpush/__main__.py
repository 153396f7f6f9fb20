from ucpush.cli.main import main

main()
