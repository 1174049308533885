rule aggregate:
    input:
        metrics=expand(
            f"{P['eval']}/metrics.json",
            name=NAME,
            variant=VARIANTS,
            seed=SEEDS,
            cls=CLASSES,
        ),
        figures=expand(
            f"{P['eval']}/figures",
            name=NAME,
            variant=VARIANTS,
            seed=SEEDS,
            cls=CLASSES,
        ),
        curves=expand(
            f"{P['eval']}/{{curve}}",
            name=NAME,
            variant=VARIANTS,
            seed=SEEDS,
            cls=CLASSES,
            curve=["roc_image.csv", "pro.csv"],
        ),
        logs=expand(
            P["train_log"], name=NAME, variant=VARIANTS, seed=SEEDS, cls=CLASSES
        ),
    output:
        md=report(
            f"results/tables/{{name}}{TAG}.md",
            category="Comparison table",
            caption="../report/table.rst",
        ),
        csv=f"results/tables/{{name}}{TAG}.csv",
        tex=f"results/tables/{{name}}{TAG}.tex",
        json=f"results/tables/{{name}}{TAG}.json",
        variants=report(
            f"results/figures/{{name}}{TAG}_variants.png",
            category="Figures",
            caption="../report/variants.rst",
        ),
        loss=report(
            f"results/figures/{{name}}{TAG}_loss.png",
            category="Figures",
            caption="../report/loss.rst",
        ),
        gallery=report(
            f"results/figures/{{name}}{TAG}_gallery.png",
            category="Figures",
            caption="../report/gallery.rst",
        ),
        seeds=report(
            f"results/figures/{{name}}{TAG}_seeds.png",
            category="Figures",
            caption="../report/seeds.rst",
        ),
        plots=directory(P["plots"].format(name="{name}", tag=TAG)),
    log:
        "logs/aggregate/{name}.log",
    conda:
        "../envs/skrd4ad.yaml"
    params:
        code=job_code("aggregate"),
        read=aggregate_params,
    message:
        "Aggregating {wildcards.name}: comparison table and figures"
    script:
        "../scripts/aggregate.py"
