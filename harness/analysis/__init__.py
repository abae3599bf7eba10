"""Reading results back: the seed scan, the seed-effect comparison and its report."""
