"""The peer: the LangGraph dev server (``langgraph-cli[inmem]``) in its own venv."""
