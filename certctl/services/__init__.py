"""Use cases. Every state change happens in one service function, in one transaction with its audit event."""
