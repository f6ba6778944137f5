use super::*;

/// Both drawings of a chart, as the tests read them.
struct Both {
    svg: String,
    png: Vec<u8>,
}

fn render(chart: &impl Chart) -> Result<Both, PlotError> {
    Ok(Both {
        svg: svg(chart)?,
        png: png(chart)?,
    })
}

fn curves() -> LineChart {
    let series = |label: &str, f: fn(f64) -> f64| Series {
        label: label.into(),
        points: (0..10).map(|e| (e as f64, f(e as f64))).collect(),
    };
    LineChart {
        title: "Training curves".into(),
        source: "runs/demo".into(),
        x_label: "epoch".into(),
        x_integers: true,
        panels: vec![
            LinePanel {
                y_label: "loss".into(),
                series: vec![
                    series("train", |e| 2.0 / (1.0 + e)),
                    series("eval", |e| 2.2 / (1.0 + e)),
                ],
            },
            LinePanel {
                y_label: "top-1 (%)".into(),
                series: vec![series("train", |e| 10.0 * e)],
            },
        ],
    }
}

#[test]
fn a_line_chart_has_its_title_source_axis_labels_and_legend() {
    let fig = render(&curves()).unwrap();
    let t = texts(&fig.svg);
    for needle in [
        "Training curves",
        "runs/demo",
        "epoch",
        "loss",
        "top-1 (%)",
        "train",
        "eval",
    ] {
        assert!(t.iter().any(|x| x == needle), "no `{needle}` in {t:?}");
    }
    // Ticks: several numbers on each axis.
    assert!(
        t.iter().filter(|x| x.parse::<f64>().is_ok()).count() >= 10,
        "{t:?}"
    );
}

fn grid() -> Heatmap {
    Heatmap {
        title: "val top-1 by lr × wd".into(),
        source: "sweeps/demo".into(),
        x_label: "weight decay".into(),
        y_label: "lr".into(),
        x_ticks: vec!["0.01".into(), "0.001".into(), "0.0001".into()],
        y_ticks: vec!["10".into(), "1".into()],
        cells: vec![
            vec![Some(61.5), Some(70.4), None],
            vec![Some(55.0), Some(66.0), Some(64.0)],
        ],
        decimals: 1,
        marked: Some(((0, 1), "chosen".into())),
        colour_label: "val top-1 (%)".into(),
        range: None,
    }
}

#[test]
fn a_heatmap_writes_every_value_in_its_cell_and_marks_the_chosen_one() {
    let fig = render(&grid()).unwrap();
    let t = texts(&fig.svg);
    for needle in [
        "val top-1 by lr × wd",
        "weight decay",
        "lr",
        "0.01",
        "0.0001",
        "10",
        "chosen",
        "val top-1 (%)",
    ] {
        assert!(t.iter().any(|x| x == needle), "no `{needle}` in {t:?}");
    }
    for value in ["61.5", "70.4", "55.0", "66.0", "64.0", "–"] {
        assert_eq!(
            t.iter().filter(|x| *x == value).count(),
            1,
            "`{value}` once in {t:?}"
        );
    }
    // The frame of the chosen cell, in the mark colour.
    let mark = format!(
        "stroke=\"#{:02X}{:02X}{:02X}\"",
        heatmap::MARK.0,
        heatmap::MARK.1,
        heatmap::MARK.2
    );
    assert!(
        fig.svg.matches(&mark).count() >= 2,
        "the cell and the legend are framed: {mark}"
    );
}

#[test]
fn heatmap_panels_share_a_title_and_keep_their_own() {
    let mut a = grid();
    a.title = "CLS query".into();
    a.marked = None;
    let mut b = grid();
    b.title = "patch queries".into();
    b.marked = None;
    let fig = render(&Heatmaps {
        title: "prompt-expert gate mass".into(),
        source: "runs/demo".into(),
        panels: vec![a, b],
    })
    .unwrap();
    let t = texts(&fig.svg);
    for needle in ["prompt-expert gate mass", "CLS query", "patch queries"] {
        assert!(t.iter().any(|x| x == needle), "no `{needle}` in {t:?}");
    }
    assert_eq!(t.iter().filter(|x| *x == "70.4").count(), 2);
}

#[test]
fn seed_points_show_each_group_with_mean_and_std() {
    let fig = render(&SeedPoints {
        title: "test top-1 over seeds".into(),
        source: "sweeps/demo".into(),
        y_label: "test top-1 (%)".into(),
        groups: vec![
            SeedGroup {
                label: "vapt".into(),
                values: vec![66.0, 68.0, 70.0],
                mean_std: Some((68.0, 2.0)),
            },
            SeedGroup {
                label: "linear".into(),
                values: vec![67.0],
                mean_std: None,
            },
        ],
    })
    .unwrap();
    let t = texts(&fig.svg);
    for needle in [
        "vapt",
        "linear",
        "68.00 ± 2.00",
        "one seed",
        "mean ± std",
        "test top-1 (%)",
    ] {
        assert!(t.iter().any(|x| x == needle), "no `{needle}` in {t:?}");
    }
    assert_eq!(
        fig.svg.matches("<circle").count(),
        4 + 1,
        "four seeds and the legend's"
    );
}

#[test]
fn the_png_has_the_charts_size_and_rasterised_text() {
    let chart = grid();
    let fig = render(&chart).unwrap();
    let img = image::load_from_memory(&fig.png).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), chart.size());
    // Dark pixels (text, axes) and the viridis cells.
    let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
    assert!(dark > 500, "{dark} dark pixels");
    let greenish = img
        .pixels()
        .filter(|p| p.0[1] as i32 > p.0[0] as i32 + 40 && p.0[1] > 100)
        .count();
    assert!(greenish > 1000, "{greenish} viridis pixels");
}

#[test]
fn short_numbers_are_readable() {
    assert_eq!(short(0.0001), "0.0001");
    assert_eq!(short(67.95), "68");
    assert_eq!(short(2.5), "2.5");
    assert_eq!(short(0.12345), "0.123");
    assert_eq!(short(12345.0), "1.23e4");
}
