"""Server-rendered SVG charts: pure functions from series to SVG text, so the pages need
no chart library, no CDN and no script to draw. Every label passes through escape(); the
colours are presentation attributes (the Content-Security-Policy forbids inline styles)."""

from html import escape

WIDTH, HEIGHT = 560, 190
LEFT, RIGHT, TOP, BOTTOM = 52, 12, 30, 24
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed")
FONT = 'font-family="system-ui, sans-serif" font-size="11" fill="#475569"'


def nice_max(value):
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above value (1 for nothing)."""
    if not value or value <= 0:
        return 1
    power = 10 ** len(str(int(value))) / 10 if value >= 1 else 1
    while power > value:
        power /= 10
    for factor in (1, 2, 2.5, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power


def number(value):
    if value >= 100 or value == int(value):
        return f"{value:,.0f}"
    return f"{value:.2g}" if value < 1 else f"{value:.1f}"


def _svg(title, body):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(title)}">'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>'
            f'<text x="{LEFT}" y="16" font-family="system-ui, sans-serif" font-size="13" '
            f'font-weight="600" fill="#0f172a">{escape(title)}</text>{body}</svg>')


def _grid(top_value, unit):
    plot_h = HEIGHT - TOP - BOTTOM
    parts = []
    for i in range(5):
        y = TOP + plot_h * i / 4
        value = top_value * (4 - i) / 4
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e2e8f0"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}>'
                     f'{escape(number(value) + unit)}</text>')
    return "".join(parts)


def _legend(series):
    parts, x = [], WIDTH - RIGHT
    for i, (label, _) in reversed(list(enumerate(series))):
        width = 7 * len(label) + 18
        x -= width
        parts.append(f'<rect x="{x}" y="8" width="10" height="10" rx="2" '
                     f'fill="{COLOURS[i % len(COLOURS)]}"/>'
                     f'<text x="{x + 14}" y="17" {FONT}>{escape(label)}</text>')
    return "".join(parts)


def _x_labels(count, labels):
    plot_w = WIDTH - LEFT - RIGHT
    parts = []
    for fraction, text in labels:
        x = LEFT + plot_w * fraction
        anchor = "start" if fraction == 0 else "end" if fraction == 1 else "middle"
        parts.append(f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" {FONT}>'
                     f'{escape(text)}</text>')
    return "".join(parts)


def line_chart(title, series, x_labels, unit=""):
    """series: [(label, [value or None, ...])], all of one length; None leaves a gap.
    x_labels: [(fraction of the width, text)]."""
    count = max((len(values) for _, values in series), default=0)
    present = [v for _, values in series for v in values if v is not None]
    if not count or not present:
        return _svg(title, _grid(1, unit) + _x_labels(count, x_labels) +
                    f'<text x="{WIDTH / 2}" y="{HEIGHT / 2 + 8}" text-anchor="middle" '
                    f'{FONT}>no data yet</text>')
    top = nice_max(max(present))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    step = plot_w / max(1, count - 1)
    body = [_grid(top, unit), _x_labels(count, x_labels), _legend(series)]
    for i, (_, values) in enumerate(series):
        path, pen = [], "M"
        for j, value in enumerate(values):
            if value is None:
                pen = "M"
                continue
            path.append(f"{pen}{LEFT + j * step:.1f},{TOP + plot_h * (1 - value / top):.1f}")
            pen = "L"
        colour = COLOURS[i % len(COLOURS)]
        if path:
            body.append(f'<path d="{" ".join(path)}" fill="none" stroke-width="2" '
                        f'stroke-linejoin="round" stroke="{colour}"/>')
        for j, value in enumerate(values):       # a point with no neighbour: a dot
            if value is not None and (j == 0 or values[j - 1] is None) and \
                    (j == len(values) - 1 or values[j + 1] is None):
                body.append(f'<circle cx="{LEFT + j * step:.1f}" '
                            f'cy="{TOP + plot_h * (1 - value / top):.1f}" r="3" '
                            f'fill="{colour}"/>')
    return _svg(title, "".join(body))


def bar_chart(title, bars):
    """bars: [(label, value)] drawn left to right (the qshape age buckets)."""
    top = nice_max(max((v for _, v in bars), default=0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = plot_w / max(1, len(bars))
    body = [_grid(top, "")]
    for i, (label, value) in enumerate(bars):
        h = plot_h * value / top
        x = LEFT + i * slot + slot * 0.15
        body.append(f'<rect x="{x:.1f}" y="{TOP + plot_h - h:.1f}" width="{slot * 0.7:.1f}" '
                    f'height="{h:.1f}" rx="2" fill="{COLOURS[0]}"/>'
                    f'<text x="{x + slot * 0.35:.1f}" y="{HEIGHT - 6}" text-anchor="middle" '
                    f'{FONT}>{escape(label)}</text>')
    return _svg(title, "".join(body))


def time_labels(span_seconds):
    hours = span_seconds / 3600
    if hours >= 2:
        return [(0, f"-{hours:.0f}h"), (0.5, f"-{hours / 2:.0f}h"), (1, "now")]
    minutes = span_seconds / 60
    return [(0, f"-{minutes:.0f}m"), (0.5, f"-{minutes / 2:.0f}m"), (1, "now")]


def chart(name, history, span_seconds, ages=()):
    """One of the dashboard's pictures by name, from metrics.history / metrics.age_buckets."""
    labels = time_labels(span_seconds)
    if name == "throughput":
        return line_chart("Jobs per minute", [("completed", history["completed"]),
                                               ("failed", history["failed"])], labels)
    if name == "backlog":
        return line_chart("Backlog", [("ready", history["ready"]),
                                      ("scheduled", history["scheduled"]),
                                      ("running", history["processing"])], labels)
    if name == "latency":
        return line_chart("Wait and run time (s)", [
            ("wait p50", history["wait_p50"]), ("wait p95", history["wait_p95"]),
            ("run p50", history["run_p50"]), ("run p95", history["run_p95"])], labels, "s")
    if name == "ages":
        return bar_chart("Ready jobs by age (qshape)", [(a["age"], a["ready"]) for a in ages])
    raise KeyError(name)
