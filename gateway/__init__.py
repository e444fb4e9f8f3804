"""The REST and SSE gateway: authentication, validation, and translation of
HTTP requests into gRPC calls to chat_service. It keeps no state of its own
beyond a short-lived API key cache, so it scales by adding replicas.
"""
