"""`make trials`: run every reliability trial N times and print what held.

    .venv/bin/python -m tests.reliability.run_trials [--reps 20] [--only SUBSTRING ...] [--json PATH]

Prints one row per trial: repetitions, runs with every invariant held, violations (with details
below the table), duplicates inside the named at-least-once window, and the measured window
(SMTP acceptance -> ledger 'sent'). A run counts as held only if no invariant broke; violations that
a known, reported bug explains (invariants.KNOWN_BUGS, B1...) are listed with its id. Exit status 1 if
any violation is not explained by a known bug.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")  # the project's, with a SECRET_KEY for the trials


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=int(os.environ.get("TRIAL_REPS", 20)))
    parser.add_argument("--only", action="append", default=[],
                        help="run only the trials whose name contains this (repeat for several; groups of trials "
                             "can then run side by side)")
    parser.add_argument("--json", default="", help="also write every outcome to this file")
    args = parser.parse_args(argv)

    from tests.reliability import harness, invariants, trials

    bug_ids = {key: f"B{n}" for n, key in enumerate(invariants.KNOWN_BUGS, start=1)}

    def bug_id(key):
        return bug_ids.get(key, "?")

    harness.drop_leftover_databases()
    template = harness.ensure_template()
    exact = {o.lower() for o in args.only} & {n.lower() for n in trials.TRIALS}  # a full name means that trial only
    names = [n for n in trials.TRIALS if not args.only or n.lower() in exact
             or any(o.lower() in n.lower() for o in args.only if o.lower() not in exact)]
    rows, details, window, dump = [], [], [], []
    unexplained = 0
    started = time.monotonic()
    for name in names:
        held = in_window = 0
        known = set()
        seconds = []
        for rep in range(args.reps):
            outcome = trials.run_one(name, template, rep)
            seconds.append(outcome.metrics.get("seconds", 0))
            window += outcome.metrics.get("window_ms") or []
            in_window += len(outcome.verdict.in_window)
            tags = {bug_id(invariants.known_bug(v)) for v in outcome.verdict.known}
            known |= tags
            found = outcome.verdict.violations + [f"[{bug_id(invariants.known_bug(v))}] {v}"
                                                  for v in outcome.verdict.known]
            unexplained += len(outcome.verdict.violations)
            if not found:
                held += 1
            else:
                details.append((name, rep, found, outcome.notes))
            dump.append({"trial": name, "rep": rep, "violations": outcome.verdict.violations,
                         "known": outcome.verdict.known, "in_window": outcome.verdict.in_window,
                         "notes": outcome.notes,
                         "metrics": {k: v for k, v in outcome.metrics.items() if k != "window_ms"}})
            print(f"  {name} rep {rep}: {'ok' if not found else 'VIOLATED'} ({outcome.metrics.get('seconds')}s)",
                  file=sys.stderr, flush=True)
        rows.append((name, args.reps, held, args.reps - held, in_window, statistics.mean(seconds),
                     ", ".join(sorted(known))))

    width = max(len(r[0]) for r in rows) if rows else 10
    print()
    print(f"{'trial':<{width}}  reps  all held  violated  dup-in-window  mean s  bugs seen")
    print(f"{'-' * width}  ----  --------  --------  -------------  ------  ---------")
    for name, reps, held, violated, dups, mean_s, known in rows:
        print(f"{name:<{width}}  {reps:>4}  {held:>8}  {violated:>8}  {dups:>13}  {mean_s:>6.1f}  {known or '-'}")
    total_runs = sum(r[1] for r in rows)
    total_held = sum(r[2] for r in rows)  # a run counts as held only if no invariant broke, known bug or not
    print(f"\n{total_held}/{total_runs} trial runs held every invariant in {time.monotonic() - started:.0f}s.")
    if window:
        print(f"At-least-once window inside the trials (SMTP acceptance -> the row's sent_at), {len(window)} "
              f"emails: median {percentile(window, 50):.1f} ms, p99 {percentile(window, 99):.1f} ms, "
              f"max {max(window):.1f} ms.")
    if not args.only:
        print("At-least-once window from outside (acceptance -> 'sent' committed and seen by a poller):")
        for path in ("command", "worker"):
            for quit_delay in (0.0, 0.05):
                probed, _ = trials.measure_window(template, path, quit_delay=quit_delay)
                print(f"  {path:<7} SMTP QUIT round trip {quit_delay * 1000:>3.0f} ms: {len(probed)} emails, median "
                      f"{percentile(probed, 50):.1f} ms, p99 {percentile(probed, 99):.1f} ms, max {max(probed):.1f} ms")
    if known_seen := sorted({k for r in rows for k in r[6].split(", ") if k}):
        print("\nKnown bugs (each also a strict-xfail test in test_trials.py):")
        for key, text in invariants.KNOWN_BUGS.items():
            if bug_id(key) in known_seen:
                print(f"  {bug_id(key)}  {key}: {text}")
    if details:
        print("\nViolations:")
        for name, rep, violations, notes in details:
            print(f"- {name}, rep {rep}:")
            for v in violations[:20]:
                print(f"    {v.splitlines()[0][:400]}")
            if len(violations) > 20:
                print(f"    ... and {len(violations) - 20} more")
            for n in notes:
                print(f"    note: {n}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"outcomes": dump, "window_ms": window}, f, indent=1, default=str)
    print(f"\n{unexplained} violation(s) not explained by a known bug.")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
