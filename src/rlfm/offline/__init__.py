"""Making offline RL data from Gymnasium environments: episodes, segments, behaviour policies."""
