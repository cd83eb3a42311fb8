//! The browser's pages as HTML strings: the grid, a sample, the failure reasons. The same
//! functions make the served pages and `--static`'s files; only the links differ.

use super::dataset::{Dataset, RowRef};
use super::query::{Page, Query};
use super::rows::{read_dense, ShardRows};
use htmlize::{escape_attribute as attr, escape_text as text};
use std::fmt::Write;

/// How pages link to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// The server's routes.
    Server,
    /// Files side by side in one folder (`browse --static`).
    Static,
}

impl Links {
    /// The grid at `page` of `q`.
    pub fn grid(&self, q: &Query, page: usize) -> String {
        match self {
            Links::Server => format!("/?{}", q.to_query_string(Some(page))),
            Links::Static if page <= 1 => "index.html".into(),
            Links::Static => format!("page-{page}.html"),
        }
    }

    /// A sample's page.
    pub fn sample(&self, ds: &Dataset, r: RowRef, key: &str) -> String {
        let shard = &ds.parts[r.part].shards[r.shard].name;
        match self {
            Links::Server => format!("/sample/{}/{shard}/{}", r.part, url_part(key)),
            Links::Static => format!("sample-{}-{shard}-{}.html", r.part, file_part(key)),
        }
    }

    /// A sample's image (`ext` its extension in the tar).
    pub fn image(&self, ds: &Dataset, r: RowRef, key: &str, ext: &str) -> String {
        let shard = &ds.parts[r.part].shards[r.shard].name;
        match self {
            Links::Server => format!("/image/{}/{shard}/{}", r.part, url_part(key)),
            Links::Static => format!("img/{}-{shard}-{}.{ext}", r.part, file_part(key)),
        }
    }

    /// The failure reasons page.
    pub fn reasons(&self) -> &'static str {
        match self {
            Links::Server => "/reasons",
            Links::Static => "reasons.html",
        }
    }

    /// The density report.
    pub fn density(&self, ds: &Dataset) -> Option<String> {
        let rel = ds.density.as_ref()?.strip_prefix(&ds.root).ok()?.to_string_lossy().to_string();
        Some(match self {
            Links::Server => format!("/files/{}", rel.split('/').map(url_part).collect::<Vec<_>>().join("/")),
            Links::Static => "density.html".into(),
        })
    }
}

/// What a URL path segment escapes: everything but letters, digits and `-._~`.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// A key as one URL path segment.
pub fn url_part(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

/// A key as part of a file name: `/` and other unsafe characters replaced by `_`.
pub fn file_part(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:0;background:#f6f6f4;color:#222}\
header{background:#24292f;color:#fff;padding:8px 16px}header a{color:#9cf;margin-left:12px}\
main{padding:12px 16px}form{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:8px}\
.notice{background:#fde2e1;border:1px solid #e99;padding:6px 10px;margin:6px 0}\
#grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px}\
.tile{display:block;background:#fff;border:1px solid #ddd;border-radius:6px;padding:6px;color:inherit;text-decoration:none;font-size:12px;overflow:hidden}\
.tile .thumb{height:140px;display:flex;align-items:center;justify-content:center;background:#eee;overflow:hidden}\
.tile img{max-width:100%;max-height:140px}.tile .k{font-weight:600}.tile .r{color:#a33}\
.st{display:inline-block;padding:0 6px;border-radius:8px;background:#ddd}.st.success{background:#cfe9cf}\
.st.failed_to_download,.st.failed_to_resize{background:#f5c6c4}.st.filtered,.st.duplicate{background:#f3e3b5}\
.flag{display:inline-block;padding:0 6px;margin-left:4px;border-radius:8px;background:#f3e3b5}\
mark{background:#ffe680;padding:0 1px}table{border-collapse:collapse}td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
.caption{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin:8px 0}.meta{color:#666;font-size:12px}\
.pager a{margin-right:12px}.sample{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}\
.big{flex:1 1 420px;max-width:640px}.big img{max-width:100%;max-height:80vh}.side{flex:1 1 420px}";

/// A whole page: `title`, the header's links, then `body`.
fn document(ds: &Dataset, links: Links, title: &str, body: &str) -> String {
    let name = match &ds.mirror {
        Some(m) => m.url().to_string(),
        None => ds.root.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
    };
    let mut nav = format!(
        "<a href=\"{}\">grid</a><a href=\"{}\">failure reasons</a>",
        attr(links.grid(&Query::default(), 1)),
        links.reasons()
    );
    if let Some(d) = links.density(ds) {
        let _ = write!(nav, "<a href=\"{}\" id=\"density-link\">density report</a>", attr(d));
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · {}</title>\
         <link rel=\"icon\" href=\"data:,\"><meta name=\"viewport\" content=\"width=device-width\"><style>{STYLE}</style></head>\
         <body><header><b>pixforge browse</b> · {} · {} rows{nav}</header><main>{body}</main></body></html>\n",
        text(title),
        text(&name),
        text(&name),
        ds.total_rows()
    )
}

fn status_badge(status: &str) -> String {
    format!("<span class=\"st {}\">{}</span>", attr(status), text(status))
}

/// The aspect-ratio bucket (PixArt's h/w keys) of a `width`×`height` image.
fn bucket(width: u32, height: u32) -> String {
    let table = crate::latents::buckets::table(512, false).unwrap_or_default();
    if table.is_empty() || width == 0 {
        return String::new();
    }
    let b = crate::latents::buckets::closest(&table, height as usize, width as usize);
    format!("bucket {:.2}", b.key)
}

fn options(name: &str, label: &str, values: &[(String, String)], selected: Option<&str>) -> String {
    let mut s = format!("<label>{label} <select name=\"{name}\" id=\"f-{name}\" onchange=\"this.form.submit()\"><option value=\"\">any</option>");
    for (v, shown) in values {
        let sel = if Some(v.as_str()) == selected { " selected" } else { "" };
        let _ = write!(s, "<option value=\"{}\"{sel}>{}</option>", attr(v), text(shown));
    }
    s.push_str("</select></label>");
    s
}

/// Numeric columns offered for sorting: those of the first readable shard.
pub fn sort_columns(ds: &Dataset) -> Vec<String> {
    for (pi, p) in ds.parts.iter().enumerate() {
        for si in 0..p.shards.len() {
            if let Ok(r) = ds.rows(pi, si) {
                return r.numbers.iter().map(|(n, _)| n.clone()).collect();
            }
        }
    }
    Vec::new()
}

fn filter_form(ds: &Dataset, q: &Query) -> String {
    let statuses: Vec<_> = ds.statuses().into_iter().map(|(k, n)| (k.clone(), format!("{k} ({n})"))).collect();
    let reasons: Vec<_> = ds.reasons().into_iter().map(|(k, n)| (k.clone(), format!("{k} ({n})"))).collect();
    let flags: Vec<_> =
        crate::caption::qc::FLAGS.iter().chain(&["mismatch"]).map(|f| (f.to_string(), f.to_string())).collect();
    let several = ds.parts.len() > 1;
    let shards: Vec<_> = ds
        .parts
        .iter()
        .flat_map(|p| {
            p.shards.iter().map(move |s| if several { format!("{}/{}", p.name, s.name) } else { s.name.clone() })
        })
        .map(|s| (s.clone(), s))
        .collect();
    let sorts: Vec<_> = sort_columns(ds).into_iter().map(|c| (c.clone(), c)).collect();
    let mut f = String::from("<form id=\"filters\" method=\"get\" action=\"/\">");
    f.push_str(&options("status", "status", &statuses, q.status.as_deref()));
    f.push_str(&options("reason", "reason", &reasons, q.reason.as_deref()));
    f.push_str(&options("qc", "caption QC", &flags, q.qc.as_deref()));
    f.push_str(&options("shard", "shard", &shards, q.shard.as_deref()));
    let _ = write!(
        f,
        "<label>noun <input name=\"noun\" id=\"f-noun\" size=\"10\" value=\"{}\"></label>",
        attr(q.noun.as_deref().unwrap_or(""))
    );
    let mut sort = options("sort", "sort by", &sorts, q.sort.as_deref());
    sort = sort.replace("<option value=\"\">any</option>", "<option value=\"\">shard order</option>");
    f.push_str(&sort);
    let checked = if q.ascending { " checked" } else { "" };
    let _ = write!(
        f,
        "<label><input type=\"checkbox\" name=\"ascending\" value=\"1\" id=\"f-ascending\"{checked} \
         onchange=\"this.form.submit()\"> smallest first</label><button type=\"submit\">apply</button></form>"
    );
    f
}

fn describe(q: &Query) -> String {
    let mut parts = Vec::new();
    for (k, v) in
        [("status", &q.status), ("reason", &q.reason), ("caption QC", &q.qc), ("noun", &q.noun), ("shard", &q.shard)]
    {
        if let Some(v) = v {
            parts.push(format!("{k} = {}", text(v)));
        }
    }
    if let Some(s) = &q.sort {
        parts.push(format!("sorted by {} ({})", text(s), if q.ascending { "smallest first" } else { "largest first" }));
    }
    if parts.is_empty() {
        "all rows, in shard order".into()
    } else {
        parts.join(" · ")
    }
}

fn notices(ds: &Dataset, extra: Option<&str>) -> String {
    let mut s = String::new();
    for (part, shard, why) in ds.problems() {
        let name = if ds.parts.len() > 1 { format!("{part}/{shard}") } else { shard };
        let _ = write!(s, "<div class=\"notice problem\">shard {} cannot be shown: {}</div>", text(&name), text(&why));
    }
    if let Some(e) = extra {
        let _ = write!(s, "<div class=\"notice\">{}</div>", text(e));
    }
    s
}

/// The extension of a row's image, or `None` when it has none: served pages take a successful
/// row's image to be in its shard's tar (the server finds its member when asked, so a page never
/// indexes a tar); static pages look it up, since they copy it.
fn image_ext(links: Links, rows: &ShardRows, row: usize) -> Option<&'static str> {
    match links {
        Links::Server => (rows.status[row] == "success" && rows.has_tar).then_some("jpg"),
        Links::Static => rows.image_ext(row),
    }
}

/// One grid tile.
fn tile(ds: &Dataset, links: Links, r: RowRef, rows: &ShardRows, sort: Option<&str>) -> String {
    let key = &rows.keys[r.row];
    let status = &rows.status[r.row];
    let thumb = match image_ext(links, rows, r.row) {
        Some(ext) => {
            format!("<img src=\"{}\" alt=\"{}\" loading=\"lazy\">", attr(links.image(ds, r, key, ext)), attr(key))
        }
        None => format!(
            "<span class=\"meta\">{}</span>",
            text(if status == "success" { "no image" } else { "no image: not written" })
        ),
    };
    let reason = &rows.reason[r.row];
    let mut s = format!(
        "<a class=\"tile\" href=\"{}\" data-key=\"{}\" data-status=\"{}\"><div class=\"thumb\">{thumb}</div>\
         <div class=\"k\">{}</div><div>{}</div>",
        attr(links.sample(ds, r, key)),
        attr(key),
        attr(status),
        text(key),
        status_badge(status)
    );
    if !reason.is_empty() {
        let _ = write!(
            s,
            "<div class=\"r\" title=\"{}\">{}</div>",
            attr(reason),
            text(crate::shards::reason_class(reason))
        );
    }
    if let Some((w, h)) = rows.size[r.row] {
        let _ = write!(s, "<div class=\"m\">{w}×{h} · {}</div>", bucket(w, h));
    }
    if !rows.qc[r.row].is_empty() {
        let flags: String =
            rows.qc[r.row].split(',').map(|f| format!("<span class=\"flag\">{}</span>", text(f))).collect();
        let _ = write!(s, "<div>{flags}</div>");
    }
    if let Some(col) = sort {
        let v = rows.number(col).and_then(|c| c[r.row]);
        let shown = v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "none".into());
        let _ = write!(
            s,
            "<div class=\"v\" data-sort=\"{}\">{} {shown}</div>",
            v.map(|v| v.to_string()).unwrap_or_default(),
            text(col)
        );
    }
    s.push_str("</a>");
    s
}

/// The grid page for `q`'s page `page`.
pub fn grid(ds: &Dataset, links: Links, q: &Query, page: &Page) -> String {
    let mut body = String::new();
    match links {
        Links::Server => body.push_str(&filter_form(ds, q)),
        Links::Static => {
            let _ = write!(body, "<p class=\"meta\">selection: {}</p>", describe(q));
        }
    }
    let tiles: Vec<String> = page
        .rows
        .iter()
        .filter_map(|&r| Some(tile(ds, links, r, &*ds.rows(r.part, r.shard).ok()?, q.sort.as_deref())))
        .collect();
    body.push_str(&notices(ds, page.note.as_deref()));
    let _ = write!(
        body,
        "<p id=\"count\" data-total=\"{}\">{} rows · {} · page {} of {}</p><div id=\"grid\">{}</div>",
        page.total,
        page.total,
        describe(q),
        page.page,
        page.pages,
        tiles.join("")
    );
    body.push_str("<nav class=\"pager\">");
    if page.page > 1 {
        let _ = write!(body, "<a id=\"prev\" href=\"{}\">← previous</a>", attr(links.grid(q, page.page - 1)));
    }
    if page.page < page.pages {
        let _ = write!(body, "<a id=\"next\" href=\"{}\">next →</a>", attr(links.grid(q, page.page + 1)));
    }
    body.push_str("</nav>");
    document(ds, links, "grid", &body)
}

/// `caption` as HTML with the nouns the density tagger finds in `<mark>` (their counted form as title).
pub fn highlight_nouns(caption: &str) -> String {
    let mut out = String::new();
    let mut at = 0;
    for (word, key) in super::rows::noun_words(caption, &mut Default::default()) {
        let Some(i) = caption[at..].find(&word).map(|i| i + at) else { continue };
        out.push_str(&text(&caption[at..i]));
        let _ = write!(out, "<mark title=\"{}\">{}</mark>", attr(&key), text(&word));
        at = i + word.len();
    }
    out.push_str(&text(&caption[at..]));
    out
}

/// A sample's page: the image, its row's fields, the alt-text and every dense caption (nouns
/// marked, prompt, model, QC flags and image–text similarity where scored), and its numbers.
pub fn sample(ds: &Dataset, links: Links, r: RowRef, rows: &ShardRows) -> String {
    let part = &ds.parts[r.part];
    let shard = &part.shards[r.shard].name;
    let key = &rows.keys[r.row];
    let mut body = String::new();
    let _ = write!(body, "<h2 id=\"key\">{}</h2><div class=\"sample\">", text(key));
    if let Some(ext) = image_ext(links, rows, r.row) {
        let _ = write!(
            body,
            "<div class=\"big\"><img id=\"image\" src=\"{}\" alt=\"{}\"></div>",
            attr(links.image(ds, r, key, ext)),
            attr(key)
        );
    }
    body.push_str("<div class=\"side\">");
    let mut fields = String::from("<h3>fields</h3><table id=\"fields\">");
    let mut row = |k: &str, v: String| {
        let _ = write!(fields, "<tr><th>{}</th><td>{v}</td></tr>", text(k));
    };
    if ds.parts.len() > 1 {
        row("part", text(&part.name).to_string());
    }
    row("shard", text(shard).to_string());
    row("status", status_badge(&rows.status[r.row]));
    if !rows.reason[r.row].is_empty() {
        row("reason", text(&rows.reason[r.row]).to_string());
    }
    row("source", text(&rows.source[r.row]).to_string());
    if let Some((w, h)) = rows.size[r.row] {
        row("size", format!("{w}×{h} · {}", bucket(w, h)));
    }
    for (name, col) in &rows.numbers {
        if let Some(v) = col[r.row] {
            row(name, if v.fract() == 0.0 && v.abs() < 1e15 { format!("{v}") } else { format!("{v:.4}") });
        }
    }
    fields.push_str("</table>");
    // Image–text similarities of each caption source, where the score stage measured them.
    let mut sims: Vec<(String, f64, bool)> = Vec::new();
    if let Some(dir) = &part.scores {
        sims =
            super::rows::caption_scores(&dir.join(format!("{shard}.caption_scores.parquet")), key).unwrap_or_default();
    }
    let sim_of = |source: &str| sims.iter().find(|(s, _, _)| s == source).map(|(_, v, m)| (*v, *m));
    body.push_str("<h3>captions</h3>");
    let alt = rows.alt[r.row].as_deref().unwrap_or("");
    let alt_sim = rows.number("clip_sim_alt").and_then(|c| c[r.row]).map(|v| (v, false)).or_else(|| sim_of("alt"));
    let _ = write!(
        body,
        "<div class=\"caption\" id=\"alt\"><div class=\"meta\">alt-text (the source's caption){}</div><div class=\"text\">{}</div></div>",
        similarity(alt_sim),
        if alt.is_empty() { "<i>none</i>".to_string() } else { highlight_nouns(alt) }
    );
    if let Some(dir) = &part.captions {
        let path = crate::shards::captions::captions_path(dir, shard);
        match part.local(&path).and_then(|_| read_dense(&path)) {
            Ok(all) => {
                for (i, c) in all.iter().filter(|c| &c.key == key).enumerate() {
                    let flags: String = c
                        .qc_flags
                        .split(',')
                        .filter(|f| !f.is_empty())
                        .map(|f| format!("<span class=\"flag\">{}</span>", text(f)))
                        .collect();
                    let status = if c.status == "success" {
                        String::new()
                    } else {
                        format!(" · {} {}", status_badge(&c.status), text(&c.error))
                    };
                    let body_text =
                        c.caption.as_deref().map(highlight_nouns).unwrap_or_else(|| "<i>no caption</i>".into());
                    let _ = write!(
                        body,
                        "<div class=\"caption dense\" id=\"dense-{i}\"><div class=\"meta\">dense caption · prompt <b>{}</b> · {} ({}){status}{flags}{}</div>\
                         <div class=\"meta prompt\">{}</div><div class=\"text\">{body_text}</div></div>",
                        text(&c.prompt_id),
                        text(&c.model),
                        text(&c.backend),
                        similarity(sim_of(&c.source())),
                        text(&c.prompt),
                    );
                }
            }
            Err(e) => {
                let _ = write!(body, "<div class=\"notice\">{}</div>", text(format!("{e:#}")));
            }
        }
    }
    body.push_str(&fields);
    body.push_str("</div></div>");
    document(ds, links, key, &body)
}

fn similarity(s: Option<(f64, bool)>) -> String {
    match s {
        Some((v, mismatch)) => {
            let flag = if mismatch { "<span class=\"flag\">mismatch</span>" } else { "" };
            format!(" · image–text similarity <b class=\"sim\">{v:.4}</b>{flag}")
        }
        None => String::new(),
    }
}

/// The failure reasons: each error class with its count over the dataset and up to `examples`
/// example tiles (from the first shards that have them).
pub fn reasons(ds: &Dataset, links: Links, examples: usize, shown: &dyn Fn(RowRef) -> bool) -> String {
    let mut body = String::from("<h2>failure reasons</h2>");
    let reasons = ds.reasons();
    if reasons.is_empty() {
        body.push_str("<p>every row succeeded.</p>");
    }
    for (class, n) in reasons {
        let q = Query { reason: Some(class.clone()), ..Default::default() };
        let _ = write!(body, "<section class=\"reason\"><h3>{} <span class=\"meta\">{n} rows</span>", text(&class));
        if links == Links::Server {
            let _ = write!(body, " <a href=\"{}\">all</a>", attr(links.grid(&q, 1)));
        }
        body.push_str("</h3><div id=\"grid\">");
        for (r, rows) in ds.examples(&class, examples, shown) {
            body.push_str(&tile(ds, links, r, &rows, None));
        }
        body.push_str("</div></section>");
    }
    body.push_str(&notices(ds, None));
    document(ds, links, "failure reasons", &body)
}
