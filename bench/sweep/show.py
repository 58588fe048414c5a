"""One line per run directory of the default-student sweep: the distilled and
label-only students' test accuracy, the rationale benefit with its interval,
the faithfulness of the distilled student's rationales, and the wall times."""
import json
import sys


def main(dirs):
    print(f"{'run':<14} {'wall_s':>6} {'distill':>7} {'label':>6} {'benefit [95% CI]':>24} "
          f"{'steps_ok':>8} {'follows':>7} {'ood':>6} {'train_s':>8}")
    for d in dirs:
        with open(f"{d}/metrics.json") as f:
            m = json.load(f)
        acc = {(s["model"], s["split"]): s["accuracy"]["value"] for s in m["scores"]}
        rb = m["verdict"]["rationale_benefit"]
        fa = m["faithfulness"].get("distill", {})
        t = m["training"]
        try:
            wall = open(f"{d}/wall_s").read().strip()
        except OSError:
            wall = "?"
        print(f"{d.rstrip('/').split('/')[-1]:<14} {wall:>6} {acc[('distill', 'test')]:>7.3f} "
              f"{acc[('label-gold', 'test')]:>6.3f} "
              f"{rb['value']:>+8.3f} [{rb['lo']:+.3f}, {rb['hi']:+.3f}] "
              f"{fa.get('steps_valid') or 0:>8.2f} {fa.get('answer_follows_rationale', 0):>7.2f} "
              f"{acc.get(('distill', 'test_ood'), float('nan')):>6.3f} "
              f"{t['distill']['seconds']:>4.0f}+{t['label-gold']['seconds']:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
