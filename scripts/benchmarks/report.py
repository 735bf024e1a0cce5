"""The benchmarks' results as one rich table."""
from __future__ import annotations


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or captured: do not squeeze the table into 80 columns
        console.width = 140
    ok = {True: "[green]pass[/]", False: "[red]FAIL[/]"}
    o, p, d, g = result["overhead"], result["linear_probe"], result["data_loading"], result["gpu"]
    s = o["setting"]
    env = result["environment"]
    t = Table(title=f"transferlab bench ({'quick' if result['quick'] else 'full'}; torch threads "
                    f"{env['torch_threads']}, load avg {env['load_average_1min']:.1f}, {result['seconds']:.0f} s)")
    for col in ("measurement", "value", "target", ""):
        t.add_column(col)
    t.add_row(f"training samples/s, tl-train module + Trainer\n  {s['model']} {s['input_size']}px batch "
              f"{s['batch_size']}, {s['data']}, {s['optimizer']}+{s['scheduler']}, {s['precision']}, "
              f"median of {s['repetitions']} x {s['timed_epochs']} epochs",
              f"{o['framework_samples_per_s']:.1f}", "", "")
    t.add_row("training samples/s, plain PyTorch loop (same work)", f"{o['plain_samples_per_s']:.1f}", "", "")
    t.add_row("  framework / plain (median of per-repetition ratios)", f"{o['ratio']:.3f}", f">= {o['target']}",
              ok[o["pass"]])
    spread = lambda runs: f"{min(runs):.0f}-{max(runs):.0f}"  # noqa: E731
    t.add_row("  runs: framework / plain samples/s (best-run ratio)",
              f"{spread(o['framework_runs_samples_per_s'])} / {spread(o['plain_runs_samples_per_s'])} "
              f"({o['ratio_of_best_runs']:.3f})", "", "")
    if not s["predecoded"] and s["num_workers"] == 0 and not result["gpu"]["available"]:
        t.add_row("  framework / plain per CPU-second of this process (robust to other load)",
                  f"{o['cpu_time_ratio']:.3f}", "", "")
    lora = result["lora"]
    t.add_row("LoRA (peft adapters, r=8): training samples/s, framework / plain loop (same adapters)",
              f"{lora['framework_samples_per_s']:.1f} / {lora['plain_samples_per_s']:.1f}", "", "")
    t.add_row("  LoRA framework / plain (median of per-repetition ratios)", f"{lora['ratio']:.3f}",
              f">= {lora['target']}", ok[lora["pass"]])
    ps = p["setting"]
    t.add_row(f"linear probe fit_seconds, uncached\n  {ps['model']} {ps['input_size']}px, {ps['data']}, "
              f"{ps['epochs']} epochs", f"{p['uncached']['fit_seconds']:.2f}", "", "")
    t.add_row("linear probe fit_seconds, cached features, first run (extracts them)",
              f"{p['cached_first_run']['fit_seconds']:.2f}", "", "")
    t.add_row("  uncached / cached, first run", f"{p['ratio_first_run']:.2f}",
              f"< {p['ratio_first_run_upper_bound']} (one extraction ~ one epoch)", "")
    t.add_row("linear probe fit_seconds, cached features, later run (shared feature cache)",
              f"{p['cached']['fit_seconds']:.2f}", "", "")
    t.add_row("  uncached / cached, later run", f"{p['ratio']:.2f}", f">= {p['target']}", ok[p["pass"]])
    t.add_row("  steady epoch seconds uncached / cached",
              f"{p['uncached']['steady_epoch_seconds']:.3f} / {p['cached']['steady_epoch_seconds']:.3f} "
              f"(x{p['steady_epoch_ratio']:.1f})", "", "")
    t.add_row("  extraction of train + val features (first cached run)", f"{p['extraction_seconds']:.2f} s", "", "")
    t.add_row("  test acc uncached / cached first / cached later",
              f"{p['uncached']['test_acc']:.4f} / {p['cached_first_run']['test_acc']:.4f} / "
              f"{p['cached']['test_acc']:.4f}", "within 0.005", ok[p["test_acc_difference"] <= 0.005])
    ds = d["setting"]
    for row in d["rows"]:
        t.add_row(f"data loading images/s, num_workers={row['num_workers']} ({ds['data']} {ds['input_size']}px, "
                  f"augmented)", f"{row['images_per_s']:.0f} ({row['images_per_s_per_worker']:.0f} per worker)", "", "")
    t.add_row("  loading share of a training step when loaded in-process (num_workers=0)",
              f"{100 * d['share_of_training_step_at_0_workers']:.1f}%", "", "")
    if g["available"]:
        for row in g["rows"]:
            frac = ("n/a (unknown peak)" if row["peak_fraction"] is None
                    else f"{100 * row['peak_fraction']:.1f}% of peak")
            t.add_row(f"GPU {g['device']}: {row['model']} 224px bf16 channels_last, batch {row['batch_size']}",
                      f"{row['images_per_s']:.0f} img/s, {row['achieved_tflops']:.0f} TFLOP/s, {frac}", "", "")
    else:
        t.add_row("GPU", "no GPU", "", "")
    x = result.get("text")
    if x:
        t.add_row(f"text: training samples/s, tl-train / plain loop\n  tiny_bert, synthetic_text, batch "
                  f"{x['setting']['batch_size']}, tokenised per batch", f"{x['framework_samples_per_s']:.1f} / "
                  f"{x['plain_samples_per_s']:.1f}", "", "")
        t.add_row("  text framework / plain", f"{x['ratio']:.3f}", f">= {x['target']}", ok[x["pass"]])
        t.add_row("  tokenisation alone: texts/s (share of a plain training step)",
                  f"{x['tokenisation']['texts_per_s']:.0f} ({100 * x['tokenisation_share_of_plain_step']:.1f}%)", "", "")
    console.print(t)
