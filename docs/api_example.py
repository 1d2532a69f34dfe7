"""ditsim from Python, as in a notebook: predict one configuration, plan a cluster, compare
strategies, and look at the answers as pandas tables.

Run it: ``python docs/api_example.py`` (needs pandas: ``pip install -e ".[api]"``).
``tests/test_api.py`` runs it. Small step counts keep it to a few seconds; drop ``steps`` for
the models' usual counts. Times are seconds, memory GB.
"""

import sim

# 1. One configuration: PixArt-alpha on 8 L40s over PCIe, PipeFusion with 8 stages and 16
#    patches. The keyword arguments are sim.predict's flags.
pred = sim.predict(model="pixart", gpus=8, link="pcie", pipefusion=8, patches=16, warmup=1,
                   steps=8)
print(f"{pred.config.label()}: {pred.latency_s:.3f} s, {pred.memory_gb:.1f} GB on the fullest "
      f"GPU, bubbles {pred.metrics.bubble_fraction:.1%}")

# Its timeline as a DataFrame: one row per op and rank, start and end in seconds.
trace = pred.trace.to_frame()
trace["duration_s"] = trace["end_s"] - trace["start_s"]
busy = trace[trace["op"] == "blocks"].groupby("rank")["duration_s"].sum()
print("transformer-block seconds per rank:", busy.round(3).to_dict())

# 2. Bad input raises sim.UserError with the message the command prints after "error:".
try:
    sim.predict(model="pixart", gpus=8, ulysses=3)
except sim.UserError as err:
    print("refused:", err)

# 3. Plan a cluster: every configuration ranked, the recommendation and why.
plan = sim.plan(model="pixart", gpus=8, link="pcie", steps=8, warmup=[1])
print("recommended:", plan.recommended.config.label(), f"{plan.recommended.latency_s:.3f} s")
print("why:", plan.why)
table = plan.to_frame()
# Candidates the lower bound ruled out are rows too (simulated False, latency NaN).
print(f"{len(table)} candidates, {int(table['simulated'].sum())} simulated")
fitting = table[table["simulated"] & ~table["oom"]]
print(fitting.sort_values("latency_s").head(5)[["label", "gpus", "latency_s", "speedup",
                                                 "memory_gb"]].to_string(index=False))
# The best configuration on each GPU count.
best = fitting.loc[fitting.groupby("gpus")["latency_s"].idxmin()]
print(best[["gpus", "label", "latency_s"]].to_string(index=False))

# 4. Strategies x resolutions, as sim.compare prints them, as a table.
comparison = sim.compare(model="pixart", gpus=4, steps=8, resolutions=[1024, 2048])
wide = comparison.to_frame().pivot(index="strategy", columns="resolution", values="latency_s")
print(wide.round(3).to_string())
