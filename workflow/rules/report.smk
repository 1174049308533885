rule aggregate:
    input:
        metrics=expand(
            "results/{dataset}/eval/{variant}/seed{seed}/{cls}/metrics.json",
            dataset=DATASET, variant=VARIANTS, seed=SEEDS, cls=CLASSES,
        ),
        logs=expand(
            "results/{dataset}/train/{variant}/seed{seed}/{cls}.tsv",
            dataset=DATASET, variant=VARIANTS, seed=SEEDS, cls=CLASSES,
        ),
    output:
        md=report("results/tables/{dataset}.md", category="Comparison table", caption="../report/table.rst"),
        csv="results/tables/{dataset}.csv",
        tex="results/tables/{dataset}.tex",
        json="results/tables/{dataset}.json",
        variants=report("results/figures/{dataset}_variants.png", category="Figures", caption="../report/variants.rst"),
        loss=report("results/figures/{dataset}_loss.png", category="Figures", caption="../report/loss.rst"),
        gallery=report("results/figures/{dataset}_gallery.png", category="Figures", caption="../report/gallery.rst"),
        seeds=report("results/figures/{dataset}_seeds.png", category="Figures", caption="../report/seeds.rst"),
    log:
        "logs/aggregate/{dataset}.log",
    message:
        "Aggregating {wildcards.dataset}: comparison table and figures"
    conda:
        "../envs/skrd4ad.yaml"
    script:
        "../scripts/aggregate.py"
