"""The search: the pruning MDP (env) and its rewards, the DQN agent, the runner that loops
over episodes (search), and what it shows each finished episode to: the candidate pool,
the TensorBoard summaries and the progress lines."""
