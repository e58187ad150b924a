"""Root pytest configuration: nbval compares neither stderr (warnings, progress bars) nor SVG figures."""


def pytest_collectstart(collector):
    if getattr(collector, "path", None) is not None and collector.path.suffix == ".ipynb":
        collector.skip_compare += ("stderr", "image/svg+xml")
