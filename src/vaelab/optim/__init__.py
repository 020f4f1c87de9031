"""Optimizers (Adam, SGD, the IWAE code's Adam) and the learning-rate and KL schedules."""
