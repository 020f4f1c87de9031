"""Train a Bernoulli VAE with the DisARM estimator on scikit-learn's digits and print its test log-likelihood."""

import vaelab

run = vaelab.fit("bernoulli_vae", data="digits", estimator="disarm", epochs=20, seed=0,
                 model={"hidden": [64], "latent_dim": 16}, train={"batch_size": 64, "lr": 3e-3})
scores = run.evaluate(iw_samples=200)
print(f"test ELBO {scores['elbo']:.2f} ± {scores['elbo_stderr']:.2f} (s.e. over test images)")
print(f"test log p(x) >= {scores['iw_loglik']:.2f} ± {scores['iw_loglik_stderr']:.2f} (test images), "
      f"± {scores['iw_loglik_mc_stderr']:.3f} (Monte Carlo), K = 200")
images = run.sample(16, mode="threshold")           # [16, 64] binary images
print(f"sampled {tuple(images.shape)} images; history has {len(run.history)} epochs")
