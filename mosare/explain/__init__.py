"""Interpretability: turn model attention and attributions into pictures and tables (pure functions, no UI code).

- :mod:`mosare.explain.heatmap`: tile-attention normalisation, colour maps, slide overlays, colour bars,
  tile tables and QuPath GeoJSON export.
- :mod:`mosare.explain.report`: sentence-attention highlighting and label-scrub views of pathology reports.
- :mod:`mosare.explain.rna`: gene and pathway attention of the RNA branch.
- :mod:`mosare.explain.attribution`: signed attributions (what moved the prediction: sentence and tile
  occlusion, gene integrated gradients) beside the attention of the same items.
- :mod:`mosare.explain.scenarios`: missing-modality experiment results (tables and figures).

Nothing is re-exported here; import the submodule you need (``from mosare.explain import heatmap``).
The dashboard is the only caller that renders these; this package never imports streamlit.
"""
