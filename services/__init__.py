"""apexrl services: the replay shard, the learner, the actor and the code they share."""
