from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/inventory.smk"
include: "workflow/rules/gates.smk"
include: "workflow/rules/routing.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/cohomology.smk"
include: "workflow/rules/conjecture.smk"
include: "workflow/rules/pairs.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),
