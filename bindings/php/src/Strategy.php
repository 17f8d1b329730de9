<?php

declare(strict_types=1);

namespace KeyMesh;

/** How a pool chooses among admissible keys (keymesh.h km_strategy). */
enum Strategy: int
{
    case RoundRobin = 1;
    case LeastBusy = 2;
    case Weighted = 3;
    case Latency = 4;
    case Cost = 5;
    case Reliability = 6;
    case FillFirst = 7;
}
