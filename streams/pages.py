"""The views' HTML: a cascade page, the review queue, the banks, the sign-in page.

Pages for an on-call engineer's laptop, readable offline: everything is
inline (CSS, SVG, a few lines of script run under a per-response nonce),
nothing is fetched from anywhere, and every value is escaped. Built from
the frozen view records (:mod:`streams.cascade_view`,
:mod:`streams.review_queue`), never from live state.

The tree is drawn by :func:`graphs.layout.forest_layout` as a handful of SVG
paths (edges; live posts; uploads; taken-down posts), not one element per
post, so a cascade of 10,000 posts is a page the browser draws at once; the
posts' details ride along as one JSON array that the hover tooltip searches
through a grid. Past :data:`MAX_DRAWN` posts the first ones (in the order
they came) are drawn, and the page says so; JSON and GraphML always hold all.

>>> page = login_page("/cascade/b-1", nonce="n")
>>> "<form" in page and 'value="/cascade/b-1"' in page
True
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any, Final

from graphs.layout import forest_layout
from streams.alerts import Prediction, duration_text, rfc3339
from streams.cascade_view import CascadeSnapshot
from streams.review_queue import BankRow, EmergingItem

#: Most posts drawn in the tree (the JSON and GraphML views hold every post).
MAX_DRAWN: Final = 20_000
TREE_W: Final = 1200.0
TREE_H: Final = 560.0

CSS: Final = """
:root{--fg:#1d2330;--mute:#5b6475;--line:#d5dae3;--bg:#f7f8fa;--card:#fff;--acc:#1f5fbf;
--warn:#b7791f;--high:#c2410c;--crit:#b91c1c;--ok:#15803d}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",
Roboto,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;gap:1.2em;align-items:baseline;padding:.6em 1.2em;background:#18202e;
color:#fff}header a{color:#cfe0ff;text-decoration:none}header b{font-size:1.05em}
header .who{margin-left:auto;color:#9fb0c8;font-size:.9em}
main{max-width:1280px;margin:0 auto;padding:1em 1.2em}
h1{font-size:1.3em;margin:.2em 0 .6em}h2{font-size:1.05em;margin:1.2em 0 .5em}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.8em 1em;
margin:.6em 0}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));
gap:.5em}.fig{background:var(--bg);border-radius:4px;padding:.4em .6em}
.fig span{display:block;color:var(--mute);font-size:.8em}.fig b{font-size:1.15em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35em .5em;
border-bottom:1px solid var(--line);vertical-align:top}th{color:var(--mute);font-weight:600;
font-size:.85em}code{font-size:.85em;word-break:break-all}code.id{word-break:normal;white-space:nowrap}.mute{color:var(--mute)}
.sev-warning{color:var(--warn);font-weight:600}.sev-high{color:var(--high);font-weight:600}
.sev-critical{color:var(--crit);font-weight:700}.tag{display:inline-block;padding:0 .45em;
border-radius:3px;font-size:.8em;background:#e8eef9;color:var(--acc)}
.tag.down{background:#fde8e8;color:var(--crit)}.tag.ok{background:#e3f4e8;color:var(--ok)}
#tree{width:100%;height:560px;background:#fff;border:1px solid var(--line);border-radius:6px;
cursor:grab}#tip{position:fixed;pointer-events:none;background:#18202e;color:#fff;
padding:.4em .6em;border-radius:4px;font-size:.82em;white-space:pre;z-index:9}
form.inline{display:inline-flex;gap:.4em;flex-wrap:wrap;align-items:center;margin:.2em 0}
input,textarea,button{font:inherit}input[type=text],input[type=password]{padding:.25em .4em;
border:1px solid var(--line);border-radius:4px}button{padding:.25em .8em;border-radius:4px;
border:1px solid var(--acc);background:var(--acc);color:#fff;cursor:pointer}
button.quiet{background:#fff;color:var(--acc)}.legend i{display:inline-block;width:.8em;
height:.8em;border-radius:50%;margin:0 .3em 0 .8em;vertical-align:-1px}
.flash{background:#e3f4e8;border:1px solid #b7e1c4;padding:.5em .8em;border-radius:4px}
.err{background:#fde8e8;border:1px solid #f3b9b9}
"""


def esc(value: object) -> str:
    """Text for HTML (attributes too): every value on a page goes through this.

    >>> esc('<script>"x"</script>')
    '&lt;script&gt;&quot;x&quot;&lt;/script&gt;'
    """
    return html.escape(str(value), quote=True)


def script_json(doc: Any) -> str:
    """JSON safe inside a ``<script type="application/json">`` element.

    >>> script_json({"a": "</script>"})
    '{"a":"\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(doc, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def layout(title: str, body: str, *, nonce: str, who: str = "", script: str = "") -> str:
    """A whole page: the header with the views' links, ``body``, and ``script`` (nonce'd)."""
    tail = f'<script nonce="{esc(nonce)}">{script}</script>' if script else ""
    who_html = f'<span class="who">{esc(who)}</span>' if who else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)} · viralwatch</title><style>{CSS}</style></head><body>"
        '<header><b>viralwatch</b><a href="/emerging">Emerging</a><a href="/banks">Banks</a>'
        f"{who_html}</header><main>{body}</main>{tail}</body></html>"
    )


def _when(ts_ms: int) -> str:
    return rfc3339(ts_ms).replace("T", " ").replace(".000Z", "Z")


def _num(x: float, digits: int = 1) -> str:
    if x != x:
        return "n/a"
    if x == float("inf"):
        return "∞"
    return f"{x:,.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:,.0f}"


def _prediction(p: Prediction | None) -> str:
    """The forecast, its band and its horizon: a size means nothing without "by when".

    >>> _prediction(Prediction(4326.7, 2130.0, 21367.9, "best", 604_800.0))
    "4,327 <span class='mute'>[2,130 – 21,368] within 7d of first seen</span>"
    """
    if p is None:
        return '<span class="mute">not yet</span>'
    within = "" if p.horizon_s is None else f" within {duration_text(p.horizon_s)} of first seen"
    return (
        f"{_num(p.size, 0)}{esc(p.bracket)} "
        f"<span class='mute'>[{_num(p.low, 0)} – {_num(p.high, 0)}]{esc(within)}</span>"
    )


def _fig(label: str, value: str) -> str:
    return f'<div class="fig"><span>{esc(label)}</span><b>{value}</b></div>'


def _hashes(hashes: Sequence[tuple[str, str]]) -> str:
    if not hashes:
        return '<span class="mute">none known</span>'
    return "<br>".join(f"{esc(k)} <code>{esc(s)}</code>" for k, s in hashes)


# -- the cascade page ---------------------------------------------------------------


def tree_svg(snap: CascadeSnapshot) -> tuple[str, dict[str, Any]]:
    """The forest as SVG paths, and the posts' details for the hover (columns of arrays).

    >>> from streams.cascade_view import PostView
    >>> from streams.alerts import CascadeFigures
    >>> posts = (PostView("p0", None, "u-1", 0, True), PostView("p1", "p0", "u-2", 9, False))
    >>> svg, data = tree_svg(CascadeSnapshot("b-1", 0, 0, 0, None, CascadeFigures(), posts))
    >>> svg.count("<path"), data["id"]
    (4, ['p0', 'p1'])
    """
    posts = snap.posts[:MAX_DRAWN]
    index = {p.post_id: i for i, p in enumerate(posts)}
    parents = [index.get(p.parent, -1) if p.parent is not None else -1 for p in posts]
    x, row, columns = forest_layout(parents)
    depth = max(row, default=0)
    col_w = TREE_W / max(1, columns)
    row_h = min(60.0, TREE_H / (depth + 1))
    height = row_h * (depth + 1)
    r = max(1.2, min(6.0, col_w * 0.42, row_h * 0.3))
    px = [round(col_w * (xi + 0.5), 1) for xi in x]
    py = [round(row_h * (ri + 0.5), 1) for ri in row]
    edges, live, roots, down = [], [], [], []
    for i, p in enumerate(posts):
        dot = f"M{px[i]} {py[i]}h0"
        if not p.live:
            down.append(dot)
        elif parents[i] < 0:
            roots.append(dot)
        else:
            live.append(dot)
        j = parents[i]
        if j >= 0:
            edges.append(f"M{px[j]} {py[j]}L{px[i]} {py[i]}")
    sw = round(2 * r, 2)
    svg = (
        f'<svg id="tree" viewBox="0 0 {TREE_W} {max(height, 40)}" '
        'preserveAspectRatio="xMidYMin meet" role="img" aria-label="reshare tree">'
        f'<path d="{"".join(edges)}" stroke="#aab4c3" stroke-width="{max(0.3, r / 4):.2f}" '
        'fill="none"/>'
        f'<path class="live" d="{"".join(live)}" stroke="#1f5fbf" stroke-width="{sw}" '
        'stroke-linecap="round"/>'
        f'<path class="root" d="{"".join(roots)}" stroke="#6d28d9" stroke-width="{sw * 1.6:.2f}" '
        'stroke-linecap="square"/>'
        f'<path class="down" d="{"".join(down)}" stroke="#dc2626" stroke-width="{sw}" '
        'stroke-linecap="round"/>'
        "</svg>"
    )
    data = {
        "x": px,
        "y": py,
        "r": r,
        "id": [p.post_id for p in posts],
        "parent": [p.parent for p in posts],
        "user": [p.user for p in posts],
        "t": [p.ts_ms for p in posts],
        "f": [p.followers for p in posts],
        "live": [1 if p.live else 0 for p in posts],
    }
    return svg, data


def velocity_svg(series: dict[str, tuple[float, ...]]) -> str:
    """Shares per minute over 1, 5 and 15 minutes, as three lines over event time."""
    ts = series.get("t", ())
    if len(ts) < 2:
        return '<p class="mute">no velocity yet</p>'
    w, h, left, bottom = 1000.0, 200.0, 46.0, 22.0
    top = max([1.0, *(v for k in ("1m", "5m", "15m") for v in series.get(k, ()))])
    t0, t1 = ts[0], ts[-1]

    def pt(t: float, v: float) -> str:
        x = left + (w - left - 8) * (t - t0) / max(1.0, t1 - t0)
        y = 8 + (h - bottom - 8) * (1 - v / top)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for key, colour in (("1m", "#dc2626"), ("5m", "#1f5fbf"), ("15m", "#15803d")):
        pts = " ".join(pt(t, v) for t, v in zip(ts, series.get(key, ()), strict=False))
        lines.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
    return (
        f'<svg viewBox="0 0 {w} {h}" style="width:100%;height:auto" role="img" '
        'aria-label="velocity over time">'
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 8}" y2="{h - bottom}" stroke="#aab4c3"/>'
        f'<line x1="{left}" y1="8" x2="{left}" y2="{h - bottom}" stroke="#aab4c3"/>'
        f'<text x="{left - 6}" y="14" text-anchor="end" font-size="11" fill="#5b6475">'
        f"{esc(_num(top))}</text>"
        f'<text x="{left - 6}" y="{h - bottom}" text-anchor="end" font-size="11" '
        'fill="#5b6475">0</text>'
        f'<text x="{left}" y="{h - 6}" font-size="11" fill="#5b6475">{esc(_when(int(t0)))}</text>'
        f'<text x="{w - 8}" y="{h - 6}" text-anchor="end" font-size="11" fill="#5b6475">'
        f"{esc(_when(int(t1)))}</text>{''.join(lines)}</svg>"
        '<div class="legend mute">shares/min over<i style="background:#dc2626"></i>1 min'
        '<i style="background:#1f5fbf"></i>5 min<i style="background:#15803d"></i>15 min</div>'
    )


TREE_SCRIPT: Final = """
(function(){
const svg=document.getElementById('tree');if(!svg)return;
const d=JSON.parse(document.getElementById('posts').textContent);
const tip=document.getElementById('tip');const vb=svg.viewBox.baseVal;
const home=[vb.x,vb.y,vb.width,vb.height];const cell=24;const grid=new Map();
for(let i=0;i<d.x.length;i++){const k=Math.floor(d.x[i]/cell)+','+Math.floor(d.y[i]/cell);
let l=grid.get(k);if(!l){l=[];grid.set(k,l);}l.push(i);}
function at(e){const p=svg.createSVGPoint();p.x=e.clientX;p.y=e.clientY;
return p.matrixTransform(svg.getScreenCTM().inverse());}
function near(p,reach){const cx=Math.floor(p.x/cell),cy=Math.floor(p.y/cell);
const n=Math.ceil(reach/cell);
let best=-1,bd=reach*reach;for(let a=-n;a<=n;a++)for(let b=-n;b<=n;b++){
const l=grid.get((cx+a)+','+(cy+b));if(!l)continue;for(const i of l){
const q=(d.x[i]-p.x)**2+(d.y[i]-p.y)**2;if(q<=bd){bd=q;best=i;}}}return best;}
let drag=null;
svg.addEventListener('mousemove',e=>{
if(drag){const s=vb.width/svg.clientWidth;vb.x=drag[0]-(e.clientX-drag[2])*s;
vb.y=drag[1]-(e.clientY-drag[3])*s;tip.hidden=true;return;}
const p=at(e);const s=vb.width/svg.clientWidth;const i=near(p,Math.max(d.r*1.5,10*s));
if(i<0){tip.hidden=true;return;}
tip.textContent=d.id[i]+(d.live[i]?'':'  (taken down)')+'\\n'+
(d.parent[i]===null?'upload (a root)':'reshare of '+d.parent[i])+'\\n'+
'time      '+new Date(d.t[i]).toISOString()+'\\n'+
'followers '+(d.f[i]===null?'unknown':d.f[i].toLocaleString())+'\\n'+
(d.user[i]?'user      '+d.user[i]:'');
tip.hidden=false;tip.style.left=(e.clientX+14)+'px';tip.style.top=(e.clientY+14)+'px';});
svg.addEventListener('mouseleave',()=>{tip.hidden=true;drag=null;});
svg.addEventListener('mousedown',e=>{drag=[vb.x,vb.y,e.clientX,e.clientY];});
window.addEventListener('mouseup',()=>{drag=null;});
svg.addEventListener('wheel',e=>{e.preventDefault();const p=at(e);const f=e.deltaY>0?1.25:0.8;
vb.x=p.x-(p.x-vb.x)*f;vb.y=p.y-(p.y-vb.y)*f;vb.width*=f;vb.height*=f;},{passive:false});
const r=document.getElementById('reset');if(r)r.addEventListener('click',()=>{
[vb.x,vb.y,vb.width,vb.height]=home;});
})();
"""


def cascade_page(
    snap: CascadeSnapshot, *, nonce: str, may_act: bool, who: str = "", flash: str = ""
) -> str:
    """The page of one cluster: tree, velocity, figures, forecast, alerts, actions, bank entry."""
    f, st = snap.figures, snap.status
    cid = esc(snap.cluster_id)
    if snap.match is not None:
        m = snap.match
        bank = (
            f"bank <b>{esc(m.bank)}</b>, {esc(m.signal_type)} <code>{esc(m.signal)}</code>, "
            f"match distance <b>{m.distance}</b>" + (f", label {esc(m.label)}" if m.label else "")
        )
    else:
        bank = "<b>unbanked</b>: no bank knows this content (yet)"
    status = (
        f'<span class="tag">episode {st.episode}: firing {esc(", ".join(st.fired))}</span>'
        if st.active
        else '<span class="tag ok">no open episode</span>'
    )
    if st.allowed_by:
        status += ' <span class="tag down">false positive: on the allow-list, no alerts</span>'
    figs = "".join(
        [
            _fig("posts", f"{f.size:,}"),
            _fig("live copies", f"{f.live:,}"),
            _fig("independent uploads", f"{f.roots:,}"),
            _fig("unique users", f"{f.unique_users:,}"),
            _fig("depth", str(f.depth)),
            _fig("breadth", f"{f.breadth:,}"),
            _fig("structural virality", _num(f.structural_virality, 2)),
            _fig("shares/min 1 m", _num(f.velocity_1m)),
            _fig("shares/min 5 m", _num(f.velocity_5m)),
            _fig("shares/min 15 m", _num(f.velocity_15m)),
            _fig("acceleration", _num(f.acceleration)),
            _fig("predicted final size [band]", _prediction(f.predicted_final_size)),
        ]
    )
    svg, data = tree_svg(snap)
    cut = (
        f'<p class="mute">Drawn: the first {MAX_DRAWN:,} of {len(snap.posts):,} posts '
        "(the JSON and GraphML hold all).</p>"
        if len(snap.posts) > MAX_DRAWN
        else ""
    )
    tree = (
        f"{cut}{svg}"
        '<div class="legend mute"><i style="background:#6d28d9;border-radius:0"></i>upload'
        '<i style="background:#1f5fbf"></i>live reshare<i style="background:#dc2626"></i>'
        "taken down · hover a post for its time, followers and (pseudonymous) user; "
        'wheel to zoom, drag to pan <button class="quiet" id="reset">reset view</button>'
        f'</div><div id="tip" hidden></div>'
        f'<script type="application/json" id="posts">{script_json(data)}</script>'
    )
    alerts = (
        "".join(
            f"<tr><td><code>{esc(a.alert_id)}</code></td>"
            f'<td class="sev-{esc(a.severity)}">{esc(a.severity)}</td><td>{esc(a.status)}</td>'
            f"<td>{esc(_when(a.ts_ms))}</td><td>{esc(a.reason)}</td>"
            f"<td>{a.size:,}{' (early)' if a.provisional else ''}</td></tr>"
            for a in sorted(st.alerts, key=lambda a: (a.ts_ms, a.alert_id))
        )
        or '<tr><td colspan="6" class="mute">no alert from this worker\'s state yet</td></tr>'
    )
    takedowns = f"{st.takedowns:,} takedown requests sent" + (
        ": latest "
        + ", ".join(
            f"<code>{esc(t.post_id)}</code> ({esc(t.severity)})" for t in st.recent_takedowns[-5:]
        )
        if st.recent_takedowns
        else ""
    )
    reviews = (
        "".join(
            "<tr>"
            + "".join(
                f"<td>{esc(r.get(k, ''))}</td>" for k in ("when", "who", "action", "why", "detail")
            )
            + "</tr>"
            for r in st.reviews
        )
        or '<tr><td colspan="5" class="mute">no reviewer action yet</td></tr>'
    )
    if not may_act:
        acts = '<p class="mute">Acting (bank, dismiss, false positive) needs a reviewer token.</p>'
    elif st.allowed_by:
        acts = action_form(snap.cluster_id, "reverse-false-positive", "Undo false positive")
    elif st.banked:
        acts = action_form(snap.cluster_id, "false-positive", "False positive", quiet=True)
    else:
        acts = action_form(snap.cluster_id, "bank", "Bank this cluster", bank=True)
        acts += action_form(snap.cluster_id, "dismiss", "Dismiss: not harmful", quiet=True)
    flash_html = f'<p class="flash">{esc(flash)}</p>' if flash else ""
    body = (
        f"{flash_html}<h1>Cascade <code>{cid}</code> {status}</h1>"
        f'<div class="card">{bank}<br><span class="mute">hashes:</span> '
        f"{_hashes(st.hashes)}<br><span class='mute'>first seen {esc(_when(snap.first_seen_ms))}"
        f", last event {esc(_when(snap.last_ms))}, as of {esc(_when(snap.as_of_ms))} (event time)"
        f"{', served by ' + esc(snap.served_by) if snap.served_by else ''}"
        f"{_held(st.held)}</span></div>"
        f'<div class="card grid">{figs}</div>'
        f"<h2>Reshare tree</h2>{tree}"
        f'<h2>Velocity over time</h2><div class="card">{velocity_svg(snap.series)}</div>'
        f'<h2>Alerts</h2><div class="card"><table><tr><th>alert</th><th>severity</th>'
        f"<th>status</th><th>time</th><th>reason</th><th>size</th></tr>{alerts}</table>"
        f'<p>{takedowns}</p></div><h2>Review</h2><div class="card">{acts}<table><tr>'
        "<th>when</th><th>who</th><th>action</th><th>why</th><th>detail</th></tr>"
        f"{reviews}</table></div>"
        f'<p class="mute">For tools: <a href="/cascade/{cid}?format=json">JSON</a> · '
        f'<a href="/cascade/{cid}/graph.json">graph (node-link JSON)</a> · '
        f'<a href="/cascade/{cid}/graph.graphml">graph (GraphML)</a></p>'
    )
    return layout(
        f"cascade {snap.cluster_id}",
        body,
        nonce=nonce,
        who=who,
        script=TREE_SCRIPT,
    )


def action_form(
    cid: str,
    action: str,
    label: str,
    *,
    bank: bool = False,
    next_path: str | None = None,
    size: int = 40,
    quiet: bool = False,
) -> str:
    """A reviewer's form (``POST /cascade/<cid>/<action>``): a reason (required), a bank
    name if ``bank``, and where to come back to.

    >>> 'action="/cascade/u-1/dismiss"' in action_form("u-1", "dismiss", "Dismiss")
    True
    """
    fields = '<input type="text" name="bank" value="internal" size="8" aria-label="bank">'
    return (
        f'<form class="inline" method="post" action="/cascade/{esc(cid)}/{esc(action)}">'
        + (f'<input type="hidden" name="next" value="{esc(next_path)}">' if next_path else "")
        + (fields if bank else "")
        + f'<input type="text" name="reason" placeholder="why (required)" size="{size}" '
        'required aria-label="reason">'
        + f'<button{" class=quiet" if quiet else ""} type="submit">{esc(label)}</button></form>'
    )


# -- the review queue, the banks, sign-in --------------------------------------------


def emerging_page(
    items: Sequence[EmergingItem],
    *,
    nonce: str,
    may_act: bool,
    who: str = "",
    missing: Sequence[str] = (),
    flash: str = "",
) -> str:
    """The review queue: fastest and biggest first, each with a link to its cascade."""
    rows = []
    for rank, it in enumerate(items, 1):
        cid = esc(it.cluster_id)
        roots = ", ".join(f"<code>{esc(p)}</code>" for p in it.root_posts[:5])
        if len(it.root_posts) > 5:
            roots += f" <span class='mute'>and {len(it.root_posts) - 5} more</span>"
        act = ""
        if may_act:
            act = action_form(
                it.cluster_id, "bank", "Bank", bank=True, next_path="/emerging", size=16
            ) + action_form(
                it.cluster_id, "dismiss", "Dismiss", next_path="/emerging", size=16, quiet=True
            )
        rows.append(
            f'<tr data-cluster="{cid}"><td>{rank}</td>'
            f'<td><a href="/cascade/{cid}"><code class="id">{cid}</code></a></td>'
            f"<td><b>{_num(it.velocity_5m)}</b> <span class='mute'>/ {_num(it.velocity_1m)}"
            "</span></td>"
            f"<td>{it.size:,} <span class='mute'>({it.live:,} live, {it.roots:,} uploads)</span>"
            f"</td><td>{esc(_when(it.first_seen_ms))}</td><td>{_hashes(it.hashes)}</td>"
            f"<td>{roots or '<span class=mute>n/a</span>'}</td><td>{act}</td></tr>"
        )
    table = (
        "<table><tr><th>#</th><th>cluster</th><th>shares/min 5 m / 1 m</th><th>posts</th>"
        "<th>first seen</th><th>hashes</th><th>root posts</th><th></th></tr>"
        + (
            "".join(rows)
            or '<tr><td colspan="8" class="mute">nothing emerging: no unbanked content has '
            "crossed a velocity rule</td></tr>"
        )
        + "</table>"
    )
    partial = (
        f'<p class="flash err">Not every worker answered ({esc(", ".join(missing))}): '
        "their clusters are missing from this list.</p>"
        if missing
        else ""
    )
    flash_html = f'<p class="flash">{esc(flash)}</p>' if flash else ""
    body = (
        f"{flash_html}{partial}<h1>Emerging: unbanked content spreading fast</h1>"
        '<p class="mute">Clusters no bank knows that crossed a velocity rule, fastest and '
        "biggest first. Hashes only: the system never holds the media. Banking one adds its "
        "hashes to a bank (through the bank topic) and audits who and why.</p>"
        f'<div class="card">{table}</div>'
    )
    return layout("emerging", body, nonce=nonce, who=who)


def banks_page(
    rows: Sequence[BankRow], *, nonce: str, who: str = "", missing: Sequence[str] = ()
) -> str:
    """Each bank: entries, last update, matches in the last hour."""
    body_rows = (
        "".join(
            f"<tr><td><b>{esc(r.bank)}</b></td><td>{r.entries:,}</td>"
            f"<td>{_updated(r.last_update_s)}</td><td>{r.matches_last_hour:,}</td></tr>"
            for r in rows
        )
        or '<tr><td colspan="4" class="mute">no bank loaded</td></tr>'
    )
    partial = (
        f'<p class="flash err">Not every worker answered ({esc(", ".join(missing))}): '
        "matches are undercounted.</p>"
        if missing
        else ""
    )
    body = (
        f"{partial}<h1>Banks</h1><div class='card'><table><tr><th>bank</th><th>entries</th>"
        "<th>last update</th><th>matches, last hour</th>"
        f"</tr>{body_rows}</table></div>"
    )
    return layout("banks", body, nonce=nonce, who=who)


def _held(n: int) -> str:
    if not n:
        return ""
    return (
        f"; {n:,} of the posts are received but not yet applied (held until every input "
        "partition has passed them): counted here, as the early alert counted them"
    )


def _updated(when_s: float | None) -> str:
    if not when_s:
        return '<span class="mute">none on the bank topic (from a file)</span>'
    return esc(_when(round(when_s * 1000)))


def login_page(next_path: str, *, nonce: str, error: str = "") -> str:
    """Sign in with a token (kept in an ``HttpOnly``, ``SameSite=Strict`` cookie)."""
    err = f'<p class="flash err">{esc(error)}</p>' if error else ""
    body = (
        f"{err}<h1>Sign in</h1><div class='card'><p>The views need a viewer or reviewer token "
        "(<code>VIRALWATCH_WEB_TOKENS</code>). Tools send it as "
        "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"
        '<form class="inline" method="post" action="/login">'
        f'<input type="hidden" name="next" value="{esc(next_path)}">'
        '<input type="password" name="token" placeholder="token" size="40" required '
        'autocomplete="current-password" aria-label="token">'
        '<button type="submit">Sign in</button></form></div>'
    )
    return layout("sign in", body, nonce=nonce)


def message_page(title: str, text: str, *, nonce: str, who: str = "") -> str:
    """A page that says one thing (a refusal, an unknown cluster)."""
    return layout(title, f"<h1>{esc(title)}</h1><p>{esc(text)}</p>", nonce=nonce, who=who)
