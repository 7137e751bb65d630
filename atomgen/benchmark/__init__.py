"""atomgen.benchmark: what the benchmarks (``bench/``) and ``atomgen compare`` share.

- :mod:`atomgen.benchmark.stats`: paired 95 % intervals over seeds, the ``w*`` and strength rules, the
  gap to CFG's front on two axes (precision and class accuracy, or the CLIP score for prompts), the
  Pareto set, the recovered recall.
- :mod:`atomgen.benchmark.scoring`: per-class scores of class-conditional samples with class accuracy,
  and per-prompt scores of text-to-image samples with the CLIP score.
- :mod:`atomgen.benchmark.report`: per-seed summaries, Markdown tables, the front plot, report writing;
  the reports of the guidance (``guidance_report``), attribution and VAE benchmarks render through it.

An application package: it imports the library, never the other way round.
"""
