"""Developer tools: the embedded broker and Redis, a fake LLM upstream, synthetic demo traffic and trace replay."""
