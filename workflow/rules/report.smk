rule aggregate:
    input:
        metrics=expand(f"{P['eval']}/metrics.json", name=NAME, variant=VARIANTS, seed=SEEDS, cls=CLASSES),
        figures=expand(f"{P['eval']}/figures", name=NAME, variant=VARIANTS, seed=SEEDS, cls=CLASSES),
        curves=expand(f"{P['eval']}/{{curve}}", name=NAME, variant=VARIANTS, seed=SEEDS, cls=CLASSES,
                      curve=["roc_image.csv", "pro.csv"]),
        logs=expand(P["train_log"], name=NAME, variant=VARIANTS, seed=SEEDS, cls=CLASSES),
    output:
        md=report("results/tables/{name}.md", category="Comparison table", caption="../report/table.rst"),
        csv="results/tables/{name}.csv",
        tex="results/tables/{name}.tex",
        json="results/tables/{name}.json",
        variants=report("results/figures/{name}_variants.png", category="Figures", caption="../report/variants.rst"),
        loss=report("results/figures/{name}_loss.png", category="Figures", caption="../report/loss.rst"),
        gallery=report("results/figures/{name}_gallery.png", category="Figures", caption="../report/gallery.rst"),
        seeds=report("results/figures/{name}_seeds.png", category="Figures", caption="../report/seeds.rst"),
        plots=directory(P["plots"]),
    log:
        "logs/aggregate/{name}.log",
    message:
        "Aggregating {wildcards.name}: comparison table and figures"
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/aggregate.py"
