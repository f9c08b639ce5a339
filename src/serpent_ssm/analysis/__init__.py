"""Analysis: do selective intervals track the information of each element, and what does the
SeRpEnt resampler keep?

- ``intervals``: record a trained model's selective intervals at every position (Mamba's Δ per
  layer, SeRpEnt's resampling intervals per layer and branch);
- ``surprisal``: information signals per byte (an n-gram's surprisal; a token-level LM's
  surprisal spread over the bytes of each token);
- ``reference_lm``: surprisal under the pretrained SmolLM2-135M (``serpent data fetch smollm2``);
- ``stats``: Pearson, Spearman, bootstrap confidence intervals, least-squares fit;
- ``report``: ``serpent analyze intervals`` (correlations, shuffled-text control, figures);
- ``resampling``: ``serpent analyze resampling`` (what each branch selects on one sample);
- ``informative``: ``serpent analyze informative`` (the share of each branch's grid points on
  the known informative positions of a sparse-digits run, at its start and its end).

How to run and read the commands: docs/analysis.md.
"""
