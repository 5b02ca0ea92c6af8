"""Graph sync between mesh members: per-field last-writer-wins registers under hybrid logical clocks."""
