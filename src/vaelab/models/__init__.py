"""Networks, latent families and the VAE: per-sample, per-example log-densities (one `log_joint`). Never
reduce, never pick an objective, never read a config. `density` is the Gaussian mixture on an autoencoder's codes."""
