"""`alexnet report` and `alexnet compare`: what a run learned, on one page, and runs side by side.

`alexnet report RUN` writes report.html (self-contained: every figure inlined, a print stylesheet)
and report.md (its figures in report-figures/ beside it) about one run: what ran and on which
machine, the curves (with the book's points for the chapter's recipe), per-class accuracy and the
confusion matrix from its checkpoint evaluated again, the most confused pairs with their images,
the first layer's filters against their initial state, activations and the layer table. Several
runs get a comparison first: one row and one curve per configuration, seeds as mean ± std.

The rooms, from the bottom: ``compare`` (the comparison table, Spread and table cells), ``facts``
(a run read once, its checkpoint evaluated, the book's points), ``figures`` (matplotlib),
``sections`` (the page as blocks), ``render`` (the blocks as HTML through the autoescaped templates
alexnet/templates/report*.html, and as Markdown), ``write`` (the command: the pages into --out,
only over what it wrote there, and serve's embedded body).
"""

from .compare import (
    FORMATS,
    NOT_RECIPE,
    ReportError,
    Spread,
    aggregate,
    budget_series,
    cell,
    compare_table,
    group_runs,
    labelled_groups,
    markdown_table,
    mean_curve,
    recipe_key,
    summarize,
)
from .facts import (
    BOOK,
    PLAN_KEYS,
    BookPoint,
    Evaluation,
    RunFacts,
    book_rows,
    evaluate_facts,
    is_d2l_recipe,
    read_facts,
)
from .figures import (
    confusion_figure,
    curves_figure,
    figure_png,
    misclassified_figure,
    plot_budget_curve,
    plot_confusion,
    plot_groups,
    plot_runs,
)
from .render import Block, html_document, to_html, to_markdown
from .sections import (
    budget_blocks,
    budget_line,
    comparison_blocks,
    run_blocks,
    section_activations,
    section_classes,
    section_curves,
    section_filters,
    section_layers,
    section_what_ran,
)
from .write import (
    COMPARE_MARK,
    FIGURES_MARK,
    MARK,
    add_report_parser,
    check_out,
    cmd_report,
    render_html_body,
    write_compare,
    write_report,
)

__all__ = [
    "BOOK",
    "COMPARE_MARK",
    "FIGURES_MARK",
    "FORMATS",
    "MARK",
    "NOT_RECIPE",
    "PLAN_KEYS",
    "Block",
    "BookPoint",
    "Evaluation",
    "ReportError",
    "RunFacts",
    "Spread",
    "add_report_parser",
    "aggregate",
    "book_rows",
    "budget_blocks",
    "budget_line",
    "budget_series",
    "cell",
    "check_out",
    "cmd_report",
    "compare_table",
    "comparison_blocks",
    "confusion_figure",
    "curves_figure",
    "evaluate_facts",
    "figure_png",
    "group_runs",
    "html_document",
    "is_d2l_recipe",
    "labelled_groups",
    "markdown_table",
    "mean_curve",
    "misclassified_figure",
    "plot_budget_curve",
    "plot_confusion",
    "plot_groups",
    "plot_runs",
    "read_facts",
    "recipe_key",
    "render_html_body",
    "run_blocks",
    "section_activations",
    "section_classes",
    "section_curves",
    "section_filters",
    "section_layers",
    "section_what_ran",
    "summarize",
    "to_html",
    "to_markdown",
    "write_compare",
    "write_report",
]
