"""Local APNs and FCM simulators (``ucpush sim``) for tests, benchmarks and ``ucpush up``."""
