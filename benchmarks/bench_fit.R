#!/usr/bin/env Rscript
# R side of benchmarks/bench_fit.py: CPU time of randomForest fits (the paper's engine).
#
# Reads <csv> (columns: y, then the predictors; the columns named in <factors> are integer
# codes), and for every mtry in <mtry,...> and every mode in {numeric, factor} fits
# randomForest(x, y, ntree, mtry, nodesize = 5) <repeats> times:
#   numeric  every predictor as the number scikit-learn sees (like for like),
#   factor   the <factors> columns as R factors, as caret / the authors' code pass them.
# Writes <out> (mode, mtry, repeat, cpu_s = user + system CPU seconds of the fit alone,
# mean_leaves = mean terminal nodes per tree).
#
# usage: Rscript bench_fit.R <csv> <out> <ntree> <mtry,...> <repeats> <seed> <factor,...>

suppressPackageStartupMessages(library(randomForest))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 7) {
  stop("usage: Rscript bench_fit.R <csv> <out> <ntree> <mtry,...> <repeats> <seed> <factor,...>")
}
d <- read.csv(args[1], check.names = FALSE)
ntree <- as.integer(args[3])
grid <- as.integer(strsplit(args[4], ",")[[1]])
repeats <- as.integer(args[5])
seed <- as.integer(args[6])
factors <- strsplit(args[7], ",")[[1]]

y <- d$y
x_num <- d[, setdiff(names(d), "y"), drop = FALSE]
x_fac <- x_num
for (f in intersect(factors, names(x_fac))) x_fac[[f]] <- factor(x_fac[[f]])

rows <- list()
for (mode in c("numeric", "factor")) {
  x <- if (mode == "numeric") x_num else x_fac
  for (m in grid) {
    for (r in seq_len(repeats)) {
      set.seed(seed + r)
      t <- system.time(fit <- randomForest(x, y, ntree = ntree, mtry = m, nodesize = 5))
      rows[[length(rows) + 1]] <- data.frame(
        mode = mode, mtry = m, rep = r, cpu_s = t[["user.self"]] + t[["sys.self"]],
        mean_leaves = mean(treesize(fit, terminal = TRUE)))
    }
  }
}
write.csv(do.call(rbind, rows), args[2], row.names = FALSE)
