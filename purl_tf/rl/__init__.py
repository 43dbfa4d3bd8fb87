"""The search: the pruning MDP (env) and its rewards, the DQN agent, and the runner that
loops over episodes."""
