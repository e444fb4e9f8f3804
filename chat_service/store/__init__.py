"""Database tables, engine set-up and queries. Only chat_service imports this."""
