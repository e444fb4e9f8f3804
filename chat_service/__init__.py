"""chat_service: owns the database, idempotency, the run state machine and the outbox."""
