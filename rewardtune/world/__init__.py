"""Small procedural worlds where reward fine-tuning can be proven: images whose ground truth is read from pixels
by a rule, never by a learned model (see `rewardtune.world.shapes`)."""
