"""ucpush: self-hosted push notifications for voice, video and chat."""

__version__ = "0.1.0"
