"""The report: one self-contained HTML page and a Markdown twin, read from the artefacts.

``data.load_report`` reads every artefact the report shows into a ``ReportData``;
``build.write_report`` writes ``index.html``, ``report.md``, the figures as PNG
files and the main tables as TSV (what ``snakemake --report`` collects). Nothing
is imported here, so the Snakefile can read ``data``'s table lists without
loading matplotlib.
"""
