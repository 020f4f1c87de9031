"""The study's report from saved artefacts only: tables, findings, inputs, layout, and the writer."""
