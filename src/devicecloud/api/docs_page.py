"""
A browsable, self-contained API reference rendered from the OpenAPI document (no CDN, works offline).
"""

from __future__ import annotations

from html import escape
from typing import Any

METHOD_ORDER = ("get", "post", "put", "patch", "delete")


def _params(operation: dict[str, Any]) -> list[str]:
    names = [f"{p['name']} ({p['in']})" for p in operation.get("parameters", [])]
    content = operation.get("requestBody", {}).get("content", {})
    for media in content.values():
        props = media.get("schema", {}).get("properties", {})
        required = set(media.get("schema", {}).get("required", []))
        names += [f"{name}{' *' if name in required else ''}" for name in props]
        break
    return names


def render(spec: dict[str, Any]) -> str:
    """
    HTML listing every operation by tag, with its parameters.
    """
    groups: dict[str, list[str]] = {}
    for path, item in sorted(spec.get("paths", {}).items()):
        for method in METHOD_ORDER:
            operation = item.get(method)
            if operation is None:
                continue
            tag = (operation.get("tags") or ["Other"])[0]
            params = ", ".join(escape(p) for p in _params(operation)) or "—"
            groups.setdefault(tag, []).append(
                f"<tr><td class=m>{method.upper()}</td><td><code>{escape(path)}</code></td>"
                f"<td>{escape(operation.get('summary', ''))}</td><td>{params}</td></tr>"
            )
    sections = "".join(
        f"<h2 id='{escape(tag)}'>{escape(tag)}</h2><table><tr><th>Method</th><th>Path</th><th>What</th>"
        f"<th>Parameters (* required)</th></tr>{''.join(rows)}</table>"
        for tag, rows in groups.items()
    )
    title = escape(spec.get("info", {}).get("title", "API"))
    version = escape(spec.get("info", {}).get("version", ""))
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>{title} API</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}}
table{{border-collapse:collapse;width:100%;margin-bottom:2rem}}
td,th{{border-bottom:1px solid #ddd;padding:.35rem .5rem;text-align:left;vertical-align:top}}
.m{{font-weight:bold;font-family:monospace}} code{{font-size:.95em}}
</style></head><body>
<h1>{title} <small>{version}</small></h1>
<p>The Particle Device Cloud API, v1, as this server implements it. Machine-readable:
<a href="/openapi.json">/openapi.json</a>.</p>
{sections}
</body></html>"""
