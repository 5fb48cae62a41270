"""Pure models of LLM serving: a replica under continuous batching, and the OpenAI fields admission reads."""
