#!/usr/bin/env Rscript
# R side of the parity check of abz_dask's tuning (benchmarks/r_parity.py drives it).
#
# For every <flux>.csv in <in_dir> (columns: fold, y, then the predictors), runs caret::train
# with method = "rf" (randomForest) on exactly the folds given in the file (index/indexOut), the
# mtry grid given, ntree trees, nodesize 5 (randomForest's regression default), non-formula
# interface so the categorical predictors stay factors, selectionFunction = "best" (lowest mean
# fold RMSE), and writes to <out_dir>:
#   <flux>_results.csv      caret's per-mtry resampling summary (mean fold RMSE, ...)
#   <flux>_predictions.csv  held-out predictions at the chosen mtry (rowIndex, pred, obs)
#   <flux>_best.csv         the chosen mtry
#
# usage: Rscript r_parity.R <in_dir> <out_dir> <ntree> <mtry,mtry,...> <seed> <factor,factor,...>

suppressPackageStartupMessages({
  library(caret)
  library(randomForest)
})

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 6) {
  stop("usage: Rscript r_parity.R <in_dir> <out_dir> <ntree> <mtry,...> <seed> <factor,...>")
}
in_dir <- args[1]
out_dir <- args[2]
ntree <- as.integer(args[3])
grid <- as.integer(strsplit(args[4], ",")[[1]])
seed <- as.integer(args[5])
factors <- strsplit(args[6], ",")[[1]]

for (path in list.files(in_dir, pattern = "\\.csv$", full.names = TRUE)) {
  flux <- sub("\\.csv$", "", basename(path))
  d <- read.csv(path, check.names = FALSE)
  folds <- d$fold
  y <- d$y
  x <- d[, setdiff(names(d), c("fold", "y")), drop = FALSE]
  for (f in intersect(factors, names(x))) x[[f]] <- factor(x[[f]])
  ids <- sort(unique(folds))
  index <- lapply(ids, function(k) which(folds != k))
  index_out <- lapply(ids, function(k) which(folds == k))
  names(index) <- names(index_out) <- sprintf("Fold%04d", ids)
  ctrl <- trainControl(method = "cv", index = index, indexOut = index_out,
                       savePredictions = "final", selectionFunction = "best",
                       returnResamp = "all", allowParallel = FALSE)
  set.seed(seed)
  t0 <- proc.time()[["elapsed"]]
  fit <- suppressWarnings(train(x = x, y = y, method = "rf", trControl = ctrl,
                                tuneGrid = data.frame(mtry = grid), ntree = ntree,
                                nodesize = 5, importance = FALSE))
  elapsed <- proc.time()[["elapsed"]] - t0
  write.csv(fit$results[, c("mtry", "RMSE", "RMSESD")],
            file.path(out_dir, paste0(flux, "_results.csv")), row.names = FALSE)
  write.csv(fit$pred[, c("rowIndex", "pred", "obs")],
            file.path(out_dir, paste0(flux, "_predictions.csv")), row.names = FALSE)
  write.csv(data.frame(mtry = fit$bestTune$mtry, seconds = elapsed),
            file.path(out_dir, paste0(flux, "_best.csv")), row.names = FALSE)
  cat(sprintf("%s: n=%d folds=%d best mtry=%d (%.1f s)\n", flux, nrow(x), length(ids),
              fit$bestTune$mtry, elapsed))
}
