"""The agent: decides the plan of each run (model chain and context window)."""
