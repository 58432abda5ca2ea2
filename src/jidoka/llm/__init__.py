"""The session's LLM agent: providers, the turn loop, and the types they share."""
