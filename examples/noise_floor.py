"""Predict the noise floor of SGD, and measure it: linear regression with label noise.

Minibatch SGD with momentum does not converge to the minimum L*: the gradient noise keeps
injecting kinetic energy, which friction removes at the same rate on average, so the loss
settles on a plateau above L*. `InertiaMonitor(noise=...)` estimates the noise trace tr(C)/B
at every step and `monitor.noise_floor()` turns it into the predicted excess loss

    E[L − L*] ≈ h² tr(C) / (4B(1 − μ)),   h² = lr (SGD),   (docs/theory.md §4, (4.11))

beside the measured mean over the later half of the run. Here L* is known exactly (least
squares), so the measured excess is the potential minus L*; the script also averages the
full-batch loss over the same steps, a measurement with a smaller standard error.

    python examples/noise_floor.py [--quick] [--noise per_sample|microbatch|fluctuation]
"""

from __future__ import annotations

import argparse

import torch

from inertia import InertiaMonitor

DIM, SAMPLES, LABEL_NOISE = 10, 4096, 0.5


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    parser.add_argument(
        "--noise", default="per_sample", choices=("per_sample", "microbatch", "fluctuation")
    )
    args = parser.parse_args(argv)
    steps, batch = (1_500, 16) if args.quick else (20_000, 16)

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SAMPLES, DIM, dtype=torch.float64, generator=generator)
    w_true = torch.randn(DIM, 1, dtype=torch.float64, generator=generator)
    y = x @ w_true + LABEL_NOISE * torch.randn(SAMPLES, 1, dtype=torch.float64, generator=generator)
    w_star = torch.linalg.lstsq(x, y).solution
    minimum = float(0.5 * (x @ w_star - y).square().mean())  # L*, exactly

    model = torch.nn.Linear(DIM, 1, bias=False, dtype=torch.float64)
    torch.nn.init.zeros_(model.weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    # --8<-- [start:floor]
    monitor = InertiaMonitor(optimizer, noise=args.noise)
    half, full = batch // 2, []
    for step in range(steps):
        if step >= steps // 2:  # the full-batch excess loss over the later half
            with torch.no_grad():
                full.append(float(0.5 * (model(x) - y).square().mean()) - minimum)
        index = torch.randint(0, SAMPLES, (batch,), generator=generator)
        optimizer.zero_grad()
        if args.noise == "per_sample":
            losses = 0.5 * (model(x[index]) - y[index]).square().squeeze(1)
            loss = losses.mean()
            monitor.observe(loss, per_sample=losses)  # before backward
            loss.backward()
        elif args.noise == "microbatch":  # two micro-batches, each observed after its backward
            for part in (index[:half], index[half:]):
                loss = 0.5 * (model(x[part]) - y[part]).square().mean()
                (loss / 2).backward()
                monitor.observe(loss, accumulate=True, batch_size=len(part))
        else:
            loss = 0.5 * (model(x[index]) - y[index]).square().mean()
            loss.backward()
            monitor.observe(loss, batch_size=batch)
        optimizer.step()

    floor = monitor.noise_floor()  # over the later half of the rows
    measured = floor["measured_potential"] - minimum
    # --8<-- [end:floor]
    predicted = floor["excess_loss"]
    print(f"law: {floor['law']}")
    print(
        f"noise={args.noise}: predicted E[L − L*] = {predicted:.5f} ± "
        f"{floor['excess_loss_stderr']:.5f}, measured {measured:.5f} ± "
        f"{floor['measured_potential_stderr']:.5f} (ratio {predicted / measured:.3f})"
    )
    full_mean = sum(full) / len(full)
    print(f"full-batch excess loss over the same steps: {full_mean:.5f}")
    print(
        f"kinetic energy: predicted {floor['kinetic']:.5f}, "
        f"measured {floor['measured_kinetic']:.5f} ± {floor['measured_kinetic_stderr']:.5f}"
    )
    return {
        "predicted": float(predicted),
        "measured": float(measured),
        "measured_stderr": float(floor["measured_potential_stderr"]),
        "measured_full_batch": full_mean,
        "predicted_kinetic": float(floor["kinetic"]),
        "measured_kinetic": float(floor["measured_kinetic"]),
    }


if __name__ == "__main__":
    main()
