"""Callbacks that attach an `InertiaMonitor` inside training frameworks, with no user code:
`inertia.integrations.lightning.InertiaCallback` and
`inertia.integrations.transformers.InertiaCallback`. Each imports its framework only when used."""
