"""Building launcher commands (mpirun, srun) as pure functions; running them is a thin step."""
