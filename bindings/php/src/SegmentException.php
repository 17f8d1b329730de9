<?php

declare(strict_types=1);

namespace KeyMesh;

/**
 * The segment cannot be used: none of that name (ENOENT), one exists
 * already (EEXIST), no permission (EACCES), not a KeyMesh segment, another
 * format or layout, truncated, still being created, its process table full.
 */
class SegmentException extends Exception
{
}
