//! `vapt report --html`: the page of a tiny sweep, checked as HTML and in a real browser
//! (Debian's Chromium, headless). Without Chromium the browser part says `skipped`, unless
//! `VAPT_REQUIRE_BROWSER=1` (set by `.ci/run`), which makes it fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cluster::{json, sweep_args};
use crate::runs::run_ok;

/// Chromium's binary, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Headless Chromium on `page` with `extra` flags (no network, a fresh profile); its stdout.
fn headless(browser: &Path, profile: &Path, page: &Path, extra: &[&str]) -> String {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_html_report_of_a_sweep_has_its_table_and_figures_and_renders_in_a_browser() {
    let tmp = tempfile::tempdir().unwrap();
    vapt_tests::write_tiny_vtab(tmp.path(), 4);
    let sweep = tmp.path().join("sweeps/patch_camelyon/vapt");
    run_ok(&sweep_args(tmp.path(), &sweep, "4,0.5:0.001,0", "42,44", 2));
    let out = tmp.path().join("report");
    let stdout = run_ok(&[
        "report".into(),
        tmp.path().join("sweeps").display().to_string(),
        "--html".into(),
        out.display().to_string(),
        "--moe-images".into(),
        "4".into(),
    ]);
    assert!(stdout.contains("1 sweeps, 1 MoE views"), "{stdout}");
    let page = out.join("index.html");
    let mut pngs: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".png"))
        .collect();
    pngs.sort();
    assert_eq!(
        pngs,
        [
            "grid-patch-camelyon-vapt.png",
            "moe-vapt.png",
            "seeds-patch-camelyon.png"
        ]
    );
    let html = std::fs::read_to_string(&page).unwrap();

    // The table cell is the summary's mean ± std; the provenance names the weights' SHA-256.
    let summary = json(&sweep.join("summary.json"));
    let cell = format!(
        "<td>{:.2} ± {:.2}</td>",
        summary["mean"].as_f64().unwrap(),
        summary["std"].as_f64().unwrap()
    );
    assert!(html.contains(&cell), "no {cell}");
    let result = json(&sweep.join("final/seed42/result.json"));
    assert!(html.contains(result["data_manifest_sha256"].as_str().unwrap_or("—")));
    // The grid with its chosen cell, the seeds, both final runs' curves, the MoE view.
    let chosen = summary["chosen"].as_array().unwrap();
    let (lr, wd) = (chosen[0].as_f64().unwrap(), chosen[1].as_f64().unwrap());
    for needle in [
        format!(
            "chosen (lr {}, wd {})",
            vapt_plot::short(lr),
            vapt_plot::short(wd)
        ),
        "validation top-1 over lr × weight decay".into(),
        "patch_camelyon: test top-1 per seed".into(),
        "vapt · seed 42".into(),
        "vapt · seed 44".into(),
        "Attention on the 4 prompt experts, per block and head".into(),
    ] {
        assert!(html.contains(&needle), "no `{needle}`");
    }
    let figures = html.matches("<figure>").count();
    assert_eq!(figures, 1 + 1 + 2 + 1, "seeds, grid, two curves, MoE");
    // Offline: nothing is fetched (the only URL is SVG's namespace).
    let urls = html.matches("http://").count() + html.matches("https://").count();
    assert_eq!(urls, html.matches("http://www.w3.org/2000/svg").count());
    assert!(!html.contains(" src="), "no external images or scripts");

    let Some(browser) = chromium() else {
        assert!(
            std::env::var("VAPT_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "VAPT_REQUIRE_BROWSER=1 but no Chromium on PATH"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium) to render the report");
        return;
    };
    let profile = tmp.path().join("profile");
    let dom = headless(&browser, &profile, &page, &["--dump-dom"]);
    assert!(dom.contains(&cell), "the rendered table has the cell");
    assert!(
        dom.contains(&format!("data-figures=\"{figures} of {figures}\"")),
        "every figure has a size on screen: {}",
        dom.lines().find(|l| l.contains("<body")).unwrap_or_default()
    );
    let shot = tmp.path().join("shot.png");
    headless(
        &browser,
        &profile,
        &page,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1366,2600",
        ],
    );
    let img = image::open(&shot).unwrap().to_rgb8();
    let pixels = (img.width() * img.height()) as usize;
    let ink = img.pixels().filter(|p| p.0.iter().any(|&c| c < 200)).count();
    let viridis = img
        .pixels()
        .filter(|p| p.0[1] as i32 > p.0[0] as i32 + 40 && p.0[1] > 100)
        .count();
    assert!(
        ink * 50 > pixels,
        "the screenshot is nearly blank: {ink} of {pixels} pixels"
    );
    assert!(viridis > 2000, "the heatmaps are drawn: {viridis} viridis pixels");
    if let Ok(keep) = std::env::var("VAPT_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}
