//! render-benchmarks: turns the reports the bench binaries wrote (`<bench>.json`, see
//! `berth_e2e::bench_report`) into `docs/benchmarks.md` and its plots (`docs/benchmarks/*.png`,
//! one CDF per group of latency series, berth and its reference on the same axes).
//!
//! Usage: render-benchmarks [--from DIR] [--out FILE.md]
//! (defaults: `.run/bench` and `docs/benchmarks.md`; the plots go into the directory named
//! like the page without `.md`). Run by `scripts/bench all`. Given the same reports the output
//! is the same but for the date it was generated on.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use berth_e2e::bench_report::{BenchReport, Machine, Series, Summary, Target};
use clap::Parser;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

#[derive(Parser)]
#[command(about = "Render docs/benchmarks.md and its plots from the bench reports")]
struct Args {
    /// Directory with the `<bench>.json` reports.
    #[arg(long, default_value = ".run/bench")]
    from: PathBuf,
    /// The page to write; plots go into the directory of the same name without `.md`.
    #[arg(long, default_value = "docs/benchmarks.md")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let written = render(&args.from, &args.out, &today)?;
    for p in written {
        println!("{}", p.display());
    }
    Ok(())
}

/// The family name the embedded font is registered under.
const FONT: &str = "sans-serif";
const PLOT_SIZE: (u32, u32) = (900, 520);
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Reads every report in `from`, draws the plots next to `out` and writes `out`; returns the
/// files written (the page last).
fn render(from: &Path, out: &Path, generated_on: &str) -> Result<Vec<PathBuf>> {
    let reports = load_reports(from)?;
    let plots_dir_name = out
        .file_stem()
        .and_then(|s| s.to_str())
        .context("--out needs a file name, e.g. docs/benchmarks.md")?
        .to_string();
    let plots_dir = out.with_file_name(&plots_dir_name);
    std::fs::create_dir_all(&plots_dir)
        .with_context(|| format!("creating {}", plots_dir.display()))?;
    register_font()?;

    let mut written = Vec::new();
    let mut keep = BTreeSet::new();
    for report in &reports {
        for plot in plan_plots(report)? {
            let path = plots_dir.join(&plot.file);
            draw_cdf(&report.bench, &plot, &path)
                .with_context(|| format!("drawing {}", path.display()))?;
            keep.insert(plot.file.clone());
            written.push(path);
        }
    }
    // Plots of series that no longer exist would linger in the docs otherwise.
    for entry in std::fs::read_dir(&plots_dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".png") && !keep.contains(&name) {
            std::fs::remove_file(plots_dir.join(&name))
                .with_context(|| format!("removing the stale plot {name}"))?;
        }
    }
    let page = render_markdown(&reports, &plots_dir_name, generated_on, from)?;
    std::fs::write(out, page).with_context(|| format!("writing {}", out.display()))?;
    written.push(out.to_path_buf());
    Ok(written)
}

/// Every `*.json` in `dir`, sorted by bench name.
fn load_reports(dir: &Path) -> Result<Vec<BenchReport>> {
    let entries = std::fs::read_dir(dir).with_context(|| {
        format!(
            "reading {}: run the benchmarks with BERTH_BENCH_OUT set (scripts/bench all does)",
            dir.display()
        )
    })?;
    let mut reports = Vec::new();
    for e in entries {
        let path = e?.path();
        if path.extension().is_some_and(|x| x == "json") {
            reports.push(BenchReport::load(&path)?);
        }
    }
    ensure!(
        !reports.is_empty(),
        "no bench reports (*.json) in {}: run the benchmarks with BERTH_BENCH_OUT set (scripts/bench all does)",
        dir.display()
    );
    reports.sort_by(|a, b| a.bench.cmp(&b.bench));
    for w in reports.windows(2) {
        ensure!(
            w[0].bench != w[1].bench,
            "two reports for bench {} in {}",
            w[0].bench,
            dir.display()
        );
    }
    Ok(reports)
}

fn register_font() -> Result<()> {
    plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("the embedded DejaVu Sans font did not load"))
}

/// One PNG: the series of a report that share a `plot` name.
struct Plot<'a> {
    /// File name inside the plots directory: `<bench>-<plot slug>.png`.
    file: String,
    title: String,
    unit: String,
    series: Vec<&'a Series>,
}

/// The plots of a report, in the order their first series was recorded. Series without
/// samples are left out, and so is a plot left with none.
fn plan_plots(report: &BenchReport) -> Result<Vec<Plot<'_>>> {
    let mut plots: Vec<Plot<'_>> = Vec::new();
    for s in report.series.iter().filter(|s| !s.samples.is_empty()) {
        match plots.iter_mut().find(|p| p.title == s.plot) {
            Some(p) => {
                ensure!(
                    p.unit == s.unit,
                    "bench {}: plot {:?} mixes units {} and {}",
                    report.bench,
                    s.plot,
                    p.unit,
                    s.unit
                );
                p.series.push(s);
            }
            None => plots.push(Plot {
                file: String::new(),
                title: s.plot.clone(),
                unit: s.unit.clone(),
                series: vec![s],
            }),
        }
    }
    let mut used = BTreeSet::new();
    for p in &mut plots {
        let base = format!("{}-{}", report.bench, slug(&p.title));
        let mut file = format!("{base}.png");
        let mut n = 2;
        while !used.insert(file.clone()) {
            file = format!("{base}-{n}.png");
            n += 1;
        }
        p.file = file;
    }
    Ok(plots)
}

/// Lowercase ASCII letters and digits, other runs replaced by one `-`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "plot".into() } else { out }
}

/// The empirical CDF of each series as a step line, berth and reference on the same axes; a
/// logarithmic x axis when the samples span more than 20x.
fn draw_cdf(bench: &str, plot: &Plot<'_>, path: &Path) -> Result<()> {
    let (lo, hi) = plot
        .series
        .iter()
        .flat_map(|s| s.samples.iter().copied())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    ensure!(lo.is_finite() && hi.is_finite(), "no samples to plot");
    let root = BitMapBackend::new(path, PLOT_SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let caption = format!("{bench}: {} latency (CDF)", plot.title);
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(caption, (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(56);
    let y = 0f64..1.0;
    if lo > 0.0 && hi / lo > 20.0 {
        let x = (lo * 0.9..hi * 1.1).log_scale();
        let chart = builder.build_cartesian_2d(x, y)?;
        finish_chart(chart, plot, log_axis_label)?;
    } else {
        let pad = ((hi - lo) * 0.05).max(hi.abs() * 0.01).max(1e-9);
        let x = (lo - pad).max(if lo >= 0.0 { 0.0 } else { f64::MIN })..hi + pad;
        let chart = builder.build_cartesian_2d(x, y)?;
        finish_chart(chart, plot, axis_label)?;
    }
    root.present()?;
    Ok(())
}

fn finish_chart<'a, X>(
    mut chart: ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, RangedCoordf64>>,
    plot: &Plot<'_>,
    x_label: fn(f64) -> String,
) -> Result<()>
where
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    chart
        .configure_mesh()
        .x_desc(format!("latency ({})", plot.unit))
        .y_desc("fraction of operations at or below")
        .x_label_formatter(&|v| x_label(*v))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, s) in plot.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let mut sorted = s.samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let mut points = Vec::with_capacity(sorted.len() * 2);
        for (k, v) in sorted.iter().enumerate() {
            points.push((*v, k as f64 / n));
            points.push((*v, (k + 1) as f64 / n));
        }
        let label = match Summary::of(&s.samples) {
            Some(sm) => format!(
                "{} (n {}, p50 {}, p99 {} {})",
                s.label,
                sm.count,
                short(sm.p50),
                short(sm.p99),
                s.unit
            ),
            None => s.label.clone(),
        };
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 22, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.5))
        .draw()?;
    Ok(())
}

/// An axis tick: [`short`] without trailing zeros.
fn axis_label(x: f64) -> String {
    let s = short(x);
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// A tick of a logarithmic axis: only 1, 2 and 5 times a power of ten are labelled, the
/// others would overlap.
fn log_axis_label(x: f64) -> String {
    if !(x.is_finite() && x > 0.0) {
        return String::new();
    }
    let mantissa = x / 10f64.powf(x.log10().floor());
    if [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| (mantissa - m).abs() < 1e-6)
    {
        axis_label(x)
    } else {
        String::new()
    }
}

/// A number with about three significant digits; `n/a` when not finite.
fn short(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".into();
    }
    let a = x.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn target_text(t: Option<Target>, number: fn(f64) -> String, suffix: &str) -> String {
    t.map_or_else(
        || "—".into(),
        |t| format!("{} {}{suffix}", t.symbol(), number(t.bound())),
    )
}

fn met_text(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "",
    }
}

/// Escapes what would break a table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// `0.500 ms`, or `0.500 ms [-1.25, 2.50]` when the bench gave a 95% interval.
fn figure_value(f: &berth_e2e::bench_report::Figure) -> String {
    let unit = cell(&f.unit);
    match f.interval {
        Some((lo, hi)) => format!("{} {unit} [{}, {}]", short(f.value), short(lo), short(hi)),
        None => format!("{} {unit}", short(f.value)),
    }
}

fn short_commit(c: &str) -> &str {
    &c[..c.len().min(12)]
}

/// The page. Pure: the same reports and date give the same text.
fn render_markdown(
    reports: &[BenchReport],
    plots_dir: &str,
    generated_on: &str,
    from: &Path,
) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "# Benchmarks\n")?;
    writeln!(
        md,
        "Generated on {generated_on} by `scripts/bench all` (the bench binaries in \
         `tests/src/bin/bench-*.rs` write `{}/<bench>.json`; `render-benchmarks` draws this \
         page from them). Every comparison puts berth beside its reference measured in the \
         same run on the same machine: read the ratios, not the absolute numbers — the \
         machine is shared and noisy.\n",
        from.display()
    )?;
    let commits: BTreeSet<String> = reports
        .iter()
        .filter_map(|r| r.run.as_ref())
        .map(|run| match &run.commit {
            Some(c) => format!(
                "`{}`{}",
                short_commit(c),
                if run.dirty {
                    " with uncommitted changes"
                } else {
                    ""
                }
            ),
            None => "an unknown commit".into(),
        })
        .collect();
    if !commits.is_empty() {
        let list: Vec<_> = commits.into_iter().collect();
        writeln!(md, "Source: commit {}.\n", list.join(", "))?;
    }

    // Machines: normally one; a report without one is said so under its own heading.
    let mut machines: Vec<(&Machine, Vec<&str>)> = Vec::new();
    for r in reports {
        if let Some(m) = &r.machine {
            match machines.iter_mut().find(|(x, _)| *x == m) {
                Some((_, benches)) => benches.push(&r.bench),
                None => machines.push((m, vec![&r.bench])),
            }
        }
    }
    for (m, benches) in &machines {
        if machines.len() == 1 {
            writeln!(md, "## Machine\n")?;
        } else {
            writeln!(md, "## Machine of {}\n", benches.join(", "))?;
        }
        write_machine(&mut md, m)?;
    }

    let targets = targets_table(reports);
    if !targets.is_empty() {
        writeln!(md, "## Targets\n")?;
        writeln!(md, "| bench | measure | value | target | result |")?;
        writeln!(md, "|---|---|---:|---|---|")?;
        md.push_str(&targets);
        md.push('\n');
    }

    for r in reports {
        write_bench(&mut md, r, plots_dir)?;
    }
    Ok(md)
}

fn write_machine(md: &mut String, m: &Machine) -> Result<()> {
    writeln!(md, "| | |\n|---|---|")?;
    writeln!(md, "| CPU | {} × {} |", cell(&m.cpu_model), m.cpus)?;
    writeln!(md, "| memory | {:.1} GiB |", m.memory_mib as f64 / 1024.0)?;
    writeln!(md, "| kernel | {} |", cell(&m.kernel))?;
    writeln!(md, "| OS | {} |", cell(&m.os))?;
    if !m.containerd.is_empty() {
        let v: Vec<_> = m
            .containerd
            .iter()
            .map(|(line, version)| format!("{line}: `{version}`"))
            .collect();
        writeln!(md, "| containerd (test bed) | {} |", cell(&v.join(", ")))?;
    }
    for (package, version) in &m.packages {
        writeln!(md, "| {} | `{}` |", cell(package), cell(version))?;
    }
    md.push('\n');
    Ok(())
}

/// One row per figure or ratio that has a target, across all reports.
fn targets_table(reports: &[BenchReport]) -> String {
    let mut t = String::new();
    for r in reports {
        for f in r.figures.iter().filter(|f| f.target.is_some()) {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} |",
                r.bench,
                cell(&f.name),
                figure_value(f),
                target_text(f.target, short, &format!(" {}", f.unit)),
                met_text(f.met)
            );
        }
        for q in r.ratios.iter().filter(|q| q.target.is_some()) {
            let _ = writeln!(
                t,
                "| {} | {}: berth / reference | {}× | {} | {} |",
                r.bench,
                cell(&q.name),
                ratio_text(q.ratio),
                target_text(q.target, ratio_text, "×"),
                met_text(q.met)
            );
        }
    }
    t
}

fn ratio_text(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "n/a".into()
    }
}

fn write_bench(md: &mut String, r: &BenchReport, plots_dir: &str) -> Result<()> {
    writeln!(md, "## {}\n", r.bench)?;
    for n in &r.notes {
        writeln!(md, "- {}", n.replace('\n', " "))?;
    }
    if !r.notes.is_empty() {
        md.push('\n');
    }
    match &r.run {
        Some(run) => {
            let [l1, l5, l15] = run.load_average;
            writeln!(
                md,
                "Ran `{}`, finished {}; load average {:.2} / {:.2} / {:.2}.\n",
                run.command.join(" "),
                run.finished_at,
                l1,
                l5,
                l15
            )?;
        }
        None => writeln!(md, "(The report does not say how or where it ran.)\n")?,
    }

    if !r.series.is_empty() {
        writeln!(md, "### Latency\n")?;
        writeln!(
            md,
            "| plot | series | unit | n | min | mean | p50 | p90 | p99 | max |"
        )?;
        writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for s in &r.series {
            match Summary::of(&s.samples) {
                Some(m) => writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    cell(&s.plot),
                    cell(&s.label),
                    cell(&s.unit),
                    m.count,
                    short(m.min),
                    short(m.mean),
                    short(m.p50),
                    short(m.p90),
                    short(m.p99),
                    short(m.max)
                )?,
                None => writeln!(
                    md,
                    "| {} | {} | {} | 0 | — | — | — | — | — | — |",
                    cell(&s.plot),
                    cell(&s.label),
                    cell(&s.unit)
                )?,
            }
        }
        md.push('\n');
        let plots = plan_plots(r)?;
        for p in &plots {
            writeln!(
                md,
                "![{}: {} latency, cumulative distribution]({plots_dir}/{})\n",
                r.bench, p.title, p.file
            )?;
        }
    }

    if !r.figures.is_empty() {
        writeln!(md, "### Figures\n")?;
        writeln!(md, "| figure | value | target | result |")?;
        writeln!(md, "|---|---:|---|---|")?;
        for f in &r.figures {
            writeln!(
                md,
                "| {} | {} | {} | {} |",
                cell(&f.name),
                figure_value(f),
                target_text(f.target, short, &format!(" {}", f.unit)),
                met_text(f.met)
            )?;
        }
        md.push('\n');
    }

    if !r.ratios.is_empty() {
        writeln!(md, "### berth / reference\n")?;
        writeln!(
            md,
            "| comparison | berth | reference | berth / reference | target | result |"
        )?;
        writeln!(md, "|---|---:|---:|---:|---|---|")?;
        for q in &r.ratios {
            writeln!(
                md,
                "| {} | {} {u} | {} {u} | {}× | {} | {} |",
                cell(&q.name),
                short(q.berth),
                short(q.reference),
                ratio_text(q.ratio),
                target_text(q.target, ratio_text, "×"),
                met_text(q.met),
                u = cell(&q.unit)
            )?;
        }
        md.push('\n');
    }
    if r.series.is_empty() && r.figures.is_empty() && r.ratios.is_empty() {
        bail!("bench {} recorded no results", r.bench);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_e2e::bench_report::sample_report;

    fn page(reports: &[BenchReport]) -> String {
        render_markdown(reports, "benchmarks", "2026-11-23", Path::new(".run/bench")).unwrap()
    }

    #[test]
    fn markdown_of_a_sample_report() {
        let md = page(&[sample_report()]);
        assert!(md.starts_with("# Benchmarks\n\nGenerated on 2026-11-23 by `scripts/bench all`"));
        assert!(md.contains("Source: commit `0123456789ab` with uncommitted changes."));
        // The machine.
        assert!(md.contains("## Machine\n"));
        assert!(md.contains("| CPU | Test CPU @ 2.00GHz × 2 |"));
        assert!(md.contains("| memory | 24.0 GiB |"));
        assert!(md.contains("| kernel | 6.1.0-test |"));
        assert!(md.contains("| containerd (test bed) | 1.7: `1.7.24~ds1-6`, 2.1: `2.1.9+ds1-5` |"));
        assert!(md.contains("| containernetworking-plugins | `1.1.1+ds1-3` |"));
        // The targets, met and not.
        assert!(md.contains("| sample | berth-ipam local | 2500 ops/s | ≥ 2000 ops/s | met |"));
        assert!(md.contains("| sample | agent RSS idle | 24.0 MiB | ≤ 20.0 MiB | **not met** |"));
        assert!(md.contains("| sample | ADD mean: berth / reference | 0.30× | ≤ 0.50× | met |"));
        // The bench: notes, run, latency rows (percentiles of 2.01..=4.00), plots, figures,
        // ratios (the zero reference gives n/a, not inf).
        assert!(md.contains("## sample\n\n- 200 pods x 1 round, bridge mode\n"));
        assert!(md.contains(
            "Ran `bench-sample --pods 200`, finished 2026-11-23T21:00:00Z; load average 1.50 / 1.25 / 1.00."
        ));
        assert!(
            md.contains("| ADD | berth-cni | ms | 200 | 2.01 | 3.00 | 3.01 | 3.80 | 3.98 | 4.00 |")
        );
        assert!(md.contains("| DEL | berth-cni | ms | 50 | 2.01 |"));
        assert!(md.contains(
            "![sample: ADD latency, cumulative distribution](benchmarks/sample-add.png)"
        ));
        assert!(md.contains(
            "![sample: DEL latency, cumulative distribution](benchmarks/sample-del.png)"
        ));
        assert!(md.contains("| duplicates | 0 addresses | — |  |"));
        // A figure with its interval, here and among the targets.
        assert!(md.contains("| p99 added | 0.500 ms [-1.25, 2.50] | ≤ 2.00 ms | met |"));
        assert!(md.contains("| sample | p99 added | 0.500 ms [-1.25, 2.50] | ≤ 2.00 ms | met |"));
        assert!(md.contains("| ADD mean | 3.00 ms | 10.0 ms | 0.30× | ≤ 0.50× | met |"));
        assert!(md.contains("| DEL p99 | 4.00 ms | 0 ms | n/a× | — |  |"));
        // Section order.
        let at = |s: &str| md.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(at("## Machine") < at("## Targets"));
        assert!(at("## Targets") < at("## sample"));
        assert!(at("### Latency") < at("### Figures"));
        assert!(at("### Figures") < at("### berth / reference"));
    }

    #[test]
    fn markdown_is_deterministic_and_ordered_by_bench() {
        let mut b = sample_report();
        b.bench = "alpha".into();
        let a = sample_report();
        let md1 = page(&[b.clone(), a.clone()]);
        let md2 = page(&[b, a]);
        assert_eq!(md1, md2);
        // One machine section for reports from the same machine.
        assert_eq!(md1.matches("## Machine").count(), 1);
    }

    #[test]
    fn different_machines_are_each_described() {
        let a = sample_report();
        let mut b = sample_report();
        b.bench = "other".into();
        b.machine.as_mut().unwrap().cpus = 4;
        let md = page(&[a, b]);
        assert!(md.contains("## Machine of sample\n"));
        assert!(md.contains("## Machine of other\n"));
        assert!(md.contains("× 4 |"));
    }

    #[test]
    fn a_report_without_results_is_an_error() {
        let r = BenchReport::new("empty");
        let err = render_markdown(&[r], "b", "d", Path::new("x")).unwrap_err();
        assert!(
            err.to_string().contains("bench empty recorded no results"),
            "{err}"
        );
    }

    #[test]
    fn plots_group_series_and_skip_empty_ones() {
        let mut r = BenchReport::new("cni");
        r.latency("ADD", "berth", "ms", &[1.0]);
        r.latency("DEL (p99)", "berth", "ms", &[1.0]);
        r.latency("ADD", "reference", "ms", &[2.0]);
        r.latency("empty", "berth", "ms", &[]);
        r.latency("del p99", "x", "ms", &[3.0]);
        let plots = plan_plots(&r).unwrap();
        let files: Vec<_> = plots.iter().map(|p| p.file.as_str()).collect();
        assert_eq!(
            files,
            ["cni-add.png", "cni-del-p99.png", "cni-del-p99-2.png"]
        );
        let labels: Vec<_> = plots[0].series.iter().map(|s| s.label.as_str()).collect();
        assert_eq!(labels, ["berth", "reference"]);

        r.latency("ADD", "other", "s", &[1.0]);
        let err = plan_plots(&r).err().expect("mixed units are refused");
        assert!(err.to_string().contains("mixes units ms and s"), "{err}");
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(1234.5), "1234");
        assert_eq!(short(12.345), "12.3");
        assert_eq!(short(1.2345), "1.23");
        assert_eq!(short(0.012345), "0.012");
        assert_eq!(short(0.0), "0");
        assert_eq!(short(f64::INFINITY), "n/a");
        assert_eq!(axis_label(2.0), "2");
        assert_eq!(axis_label(2.5), "2.5");
        assert_eq!(axis_label(150.0), "150");
        assert_eq!(log_axis_label(20.0), "20");
        assert_eq!(log_axis_label(0.5), "0.5");
        assert_eq!(log_axis_label(0.7), "");
        assert_eq!(log_axis_label(9.0), "");
        assert_eq!(slug("ADD + DEL"), "add-del");
        assert_eq!(slug("!!"), "plot");
    }

    /// End to end: a report recorded through the module's writer, read back and rendered.
    #[test]
    fn renders_written_reports_into_pngs_and_a_page() {
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("bench");
        let mut r = sample_report();
        // Wide spread: the log-scale path; the sample's ADD plot is the linear one.
        r.latency("spread", "berth", "ms", &[0.1, 0.5, 2.0, 9.0, 40.0]);
        r.write_to(&from).unwrap();
        let out = dir.path().join("docs/benchmarks.md");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let plots = dir.path().join("docs/benchmarks");
        std::fs::create_dir_all(&plots).unwrap();
        std::fs::write(plots.join("stale.png"), b"old").unwrap();
        std::fs::write(plots.join("keep.txt"), b"not a plot").unwrap();

        let written = render(&from, &out, "2026-11-23").unwrap();
        assert_eq!(written.last().unwrap(), &out);
        let md = std::fs::read_to_string(&out).unwrap();
        let mut pngs: Vec<String> = std::fs::read_dir(&plots)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".png"))
            .collect();
        pngs.sort();
        assert_eq!(
            pngs,
            ["sample-add.png", "sample-del.png", "sample-spread.png"]
        );
        assert!(
            plots.join("keep.txt").exists(),
            "only stale PNGs are removed"
        );
        for name in &pngs {
            let bytes = std::fs::read(plots.join(name)).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{name} is not a PNG"
            );
            assert!(bytes.len() > 10_000, "{name} is only {} bytes", bytes.len());
            // Width and height from the IHDR chunk.
            let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
            let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
            assert_eq!((w, h), PLOT_SIZE);
            assert!(
                md.contains(&format!("](benchmarks/{name})")),
                "{name} not in the page"
            );
        }
        // Recorded by write_to on this machine.
        assert!(md.contains("## Machine\n"));
        assert!(md.contains("Ran `render_benchmarks"));

        // Rendering the same reports again gives the same page and the same images.
        let before: Vec<Vec<u8>> = pngs
            .iter()
            .map(|n| std::fs::read(plots.join(n)).unwrap())
            .collect();
        render(&from, &out, "2026-11-23").unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), md);
        let after: Vec<Vec<u8>> = pngs
            .iter()
            .map(|n| std::fs::read(plots.join(n)).unwrap())
            .collect();
        assert!(before == after, "plots differ between two renderings");
    }

    #[test]
    fn no_reports_is_an_error_that_says_what_to_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = render(dir.path(), &dir.path().join("b.md"), "d").unwrap_err();
        assert!(err.to_string().contains("no bench reports"), "{err}");
        assert!(err.to_string().contains("BERTH_BENCH_OUT"), "{err}");
    }
}
