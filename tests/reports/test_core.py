"""generate_reports on a real output tree made by the report workflow (figures, fragments, logs, crash files)."""

from __future__ import annotations

from pathlib import Path

from qsmbids.reports import REPORTLETS
from qsmbids.reports.core import (
    collect_errors,
    collect_runs,
    generate_reports,
    render_markdown,
)


def test_page_has_every_figure(report_tree):
    out = report_tree["out"]
    page = (out / "sub-01.html").read_text()
    figures = sorted((out / "sub-01" / "figures").iterdir())
    svgs = [p for p in figures if p.suffix == ".svg"]
    assert len(svgs) == 8  # mask, 2 fields, chimap, r2star, swi, minip, accuracy scatter
    for p in svgs:
        assert f'src="sub-01/figures/{p.name}"' in page
    assert all("echo-" not in p.name and "part-" not in p.name for p in figures)
    assert (out / "sub-01" / "figures" / "sub-01_ses-1_run-01_desc-chimap_Chimap.svg").is_file()
    # fragments are inlined, the metrics JSON linked
    assert "Processing stages" in page and "did not converge in 30 iterations" in page
    assert "NRMSE (demeaned" in page and "demeaned inside the evaluation mask" in page
    assert 'href="sub-01/figures/sub-01_ses-1_run-01_desc-accuracy_Chimap.json"' in page
    for section in ("Summary", "Mask", "Fields", "Susceptibility", "Relaxometry", "SWI", "Accuracy"):
        assert f'id="sub-01_ses-1_run-01-{section.lower()}"' in page
    assert "Session 1 · Run 01" in page
    # nothing but the page was written next to the figures' tree
    assert sorted(p.name for p in report_tree["base"].iterdir()) == report_tree["before"]
    assert sorted(p.name for p in out.iterdir()) == ["logs", "sub-01", "sub-01.html"]


def test_errors_and_methods(report_tree):
    out = report_tree["out"]
    page = (out / "sub-01.html").read_text()
    assert report_tree["n_errors"] == 1
    assert "qsmbids_wf.sub_01_wf.swi_wf.swi" in page and "ValueError: phase has NaN voxels" in page
    assert "from another execution" not in page
    assert '<span class="badge">1</span>' in page
    assert "<em>qsmbids</em>" in page and "<strong>MEDI</strong>" in page
    assert "<li>echoes were combined with SNR weights</li>" in page
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert 'href="logs/CITATION.bib"' in page
    # every execution when no run uuid is given; labels without "sub-"
    assert len(collect_errors(out, "01", None)) == 2
    assert generate_reports(["01"], out, None) == 2


def test_collect_runs_groups_and_orders(tmp_path):
    fig = tmp_path / "sub-02" / "figures"
    fig.mkdir(parents=True)
    for prefix in ("sub-02_run-02", "sub-02_acq-fast_run-01"):
        for desc in ("chimap", "summary", "mask", "accuracy"):
            suffix = REPORTLETS[desc][0]
            ext = ".html" if desc == "summary" else ".svg"
            (fig / f"{prefix}_desc-{desc}_{suffix}{ext}").write_text("<p>x</p>" if ext == ".html" else "<svg/>")
    (fig / "sub-02_run-02_desc-unknown_MEGRE.svg").write_text("<svg/>")  # not a reportlet: ignored
    (fig / "sub-03_run-01_desc-mask_MEGRE.svg").write_text("<svg/>")  # another subject: ignored
    runs = collect_runs(tmp_path, "02")
    assert [r.prefix for r in runs] == ["sub-02_acq-fast_run-01", "sub-02_run-02"]
    assert runs[0].title == "Acquisition fast · Run 01"
    assert list(runs[1].sections) == ["Summary", "Mask", "Susceptibility", "Accuracy"]
    assert runs[1].sections["Summary"][0].kind == "html"
    assert runs[1].sections["Mask"][0].src == "sub-02/figures/sub-02_run-02_desc-mask_MEGRE.svg"
    assert generate_reports(["sub-02", "sub-04"], tmp_path, "none") == 0
    page = (tmp_path / "sub-02.html").read_text()
    assert page.index("sub-02_acq-fast_run-01") < page.index('id="sub-02_run-02"')
    assert "No reportlets were found" in (tmp_path / "sub-04.html").read_text()
    assert "No methods boilerplate found" in page


def test_render_markdown_is_safe():
    html = str(render_markdown("## A <b>\n\ntext & [link](https://x.org) `a<b`\n"))
    assert html == ('<h4>A &lt;b&gt;</h4>\n<p>text &amp; <a href="https://x.org">link</a> <code>a&lt;b</code></p>')
    assert str(render_markdown("")) == ""


def test_report_template_is_offline():
    from importlib import resources

    text = resources.files("qsmbids").joinpath("data", "report.html.j2").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert Path(__file__).name == "test_core.py"
