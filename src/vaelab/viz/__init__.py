"""Figures and the self-contained HTML page they are shown in; plots of data, codes and mixtures."""
