//! AssetService: every RPC's normal path, and moves that carry devices along.

use gcdr_data::pb;
use prost_types::FieldMask;
use tonic::Code;

use crate::harness::*;

const T: &str = "tenant-default";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_nest_under_a_customer_with_paths_codes_and_lookups() {
    let s = TestServer::start().await;
    let cust = create_customer(&s, T, "ACME", None).await;
    let building = create_asset(&s, T, &cust.id, "Headquarters Building", None).await;
    assert_eq!(building.path, format!("/{T}/{}/{}", cust.id, building.id));
    assert_eq!(building.depth, 0);
    assert_eq!(building.code.as_deref(), Some("HEADQUARTERS-BUILDIN"));
    let floor = create_asset(&s, T, &cust.id, "Floor 1", Some(&building.id)).await;
    let room = create_asset(&s, T, &cust.id, "Room", Some(&floor.id)).await;
    assert_eq!(room.path, format!("{}/{}", floor.path, room.id));
    assert_eq!(room.depth, 2);

    let got = s
        .assets()
        .get_asset_by_code(req(
            T,
            pb::GetAssetByCodeRequest {
                customer_id: cust.id.clone(),
                code: "ROOM".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.id, room.id);
    let listed = s
        .assets()
        .list_assets(req(
            T,
            pb::ListAssetsRequest {
                customer_id: cust.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.assets.len(), 3);
    let roots = s
        .assets()
        .list_assets(req(
            T,
            pb::ListAssetsRequest {
                customer_id: cust.id.clone(),
                roots_only: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(roots.assets.len(), 1);
    let children = s
        .assets()
        .list_asset_children(req(
            T,
            pb::ListAssetChildrenRequest {
                id: building.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        children
            .assets
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["Floor 1"]
    );
    let desc = s
        .assets()
        .list_asset_descendants(req(
            T,
            pb::ListAssetDescendantsRequest {
                id: building.id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        desc.assets
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["Floor 1", "Room"]
    );
    let anc = s
        .assets()
        .list_asset_ancestors(req(
            T,
            pb::ListAssetAncestorsRequest {
                id: room.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        anc.assets
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>(),
        ["Headquarters Building", "Floor 1"]
    );
    let forest = s
        .assets()
        .get_asset_tree(req(
            T,
            pb::GetAssetTreeRequest {
                root: Some(pb::get_asset_tree_request::Root::CustomerId(
                    cust.id.clone(),
                )),
                max_depth: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(forest.roots.len(), 1);
    assert_eq!(
        forest.roots[0].children[0].children[0]
            .asset
            .as_ref()
            .unwrap()
            .id,
        room.id
    );
    let sub = s
        .assets()
        .get_asset_tree(req(
            T,
            pb::GetAssetTreeRequest {
                root: Some(pb::get_asset_tree_request::Root::AssetId(floor.id.clone())),
                max_depth: Some(0),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sub.roots.len(), 1);
    assert!(
        sub.roots[0].children.is_empty(),
        "max_depth 0 is the node alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_of_another_customer_is_refused_and_codes_are_unique_per_customer() {
    let s = TestServer::start().await;
    let c1 = create_customer(&s, T, "C1", None).await;
    let c2 = create_customer(&s, T, "C2", None).await;
    let a1 = create_asset(&s, T, &c1.id, "Hall", None).await;
    let other = pb::Asset {
        customer_id: c2.id.clone(),
        parent_asset_id: Some(a1.id.clone()),
        name: "x".into(),
        r#type: pb::AssetType::Room as i32,
        ..Default::default()
    };
    assert_invalid(
        s.assets()
            .create_asset(req(T, pb::CreateAssetRequest { asset: Some(other) }))
            .await,
        "parent_asset_id",
    );
    // Same generated code in another customer is fine; in the same one it is suffixed.
    assert_eq!(
        create_asset(&s, T, &c2.id, "Hall", None)
            .await
            .code
            .as_deref(),
        Some("HALL")
    );
    assert_eq!(
        create_asset(&s, T, &c1.id, "Hall", None)
            .await
            .code
            .as_deref(),
        Some("HALL-2")
    );
    let explicit = pb::Asset {
        customer_id: c1.id.clone(),
        name: "y".into(),
        code: Some("HALL".into()),
        r#type: pb::AssetType::Room as i32,
        ..Default::default()
    };
    assert_code(
        s.assets()
            .create_asset(req(
                T,
                pb::CreateAssetRequest {
                    asset: Some(explicit),
                },
            ))
            .await,
        Code::AlreadyExists,
        "ASSET_CODE_EXISTS",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_and_delete_honour_masks_versions_and_dependents() {
    let s = TestServer::start().await;
    let c = create_customer(&s, T, "C", None).await;
    let a = create_asset(&s, T, &c.id, "A", None).await;
    let child = create_asset(&s, T, &c.id, "Child", Some(&a.id)).await;
    let patch = pb::Asset {
        tags: vec!["hvac".into()],
        description: Some("main".into()),
        ..Default::default()
    };
    let updated = s
        .assets()
        .update_asset(req(
            T,
            pb::UpdateAssetRequest {
                id: a.id.clone(),
                asset: Some(patch),
                update_mask: Some(FieldMask {
                    paths: vec!["tags".into(), "description".into()],
                }),
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.tags, ["hvac"]);
    assert_eq!(updated.description.as_deref(), Some("main"));
    assert_eq!(updated.name, "A");
    assert_eq!(updated.version, 2);
    let del = |id: &str| pb::DeleteAssetRequest {
        id: id.into(),
        expected_version: None,
    };
    assert_code(
        s.assets().delete_asset(req(T, del(&a.id))).await,
        Code::FailedPrecondition,
        "HAS_CHILDREN",
    );
    let d = create_device(&s, T, &child.id, "SN-1").await;
    assert_code(
        s.assets().delete_asset(req(T, del(&child.id))).await,
        Code::FailedPrecondition,
        "HAS_DEVICES",
    );
    s.devices()
        .delete_device(req(
            T,
            pb::DeleteDeviceRequest {
                id: d.id,
                expected_version: None,
            },
        ))
        .await
        .unwrap();
    s.assets()
        .delete_asset(req(T, del(&child.id)))
        .await
        .unwrap();
    s.assets().delete_asset(req(T, del(&a.id))).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_an_asset_to_another_customer_carries_its_subtree_and_devices() {
    let s = TestServer::start().await;
    let c1 = create_customer(&s, T, "C1", None).await;
    let c2 = create_customer(&s, T, "C2", None).await;
    let building = create_asset(&s, T, &c1.id, "B", None).await;
    let floor = create_asset(&s, T, &c1.id, "F", Some(&building.id)).await;
    let room = create_asset(&s, T, &c1.id, "R", Some(&floor.id)).await;
    let dev = create_device(&s, T, &room.id, "SN-MOVE").await;
    assert_eq!(dev.customer_id, c1.id);
    let target = create_asset(&s, T, &c2.id, "Target", None).await;

    let moved = s
        .assets()
        .move_asset(req(
            T,
            pb::MoveAssetRequest {
                id: floor.id.clone(),
                destination: Some(pb::move_asset_request::Destination::NewParentAssetId(
                    target.id.clone(),
                )),
                new_customer_id: None,
                expected_version: Some(1),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(moved.customer_id, c2.id);
    assert_eq!(moved.parent_asset_id.as_deref(), Some(target.id.as_str()));
    assert_eq!(moved.path, format!("{}/{}", target.path, floor.id));
    assert_eq!(moved.depth, 1);
    let room_now = s
        .assets()
        .get_asset(req(
            T,
            pb::GetAssetRequest {
                id: room.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(room_now.customer_id, c2.id);
    assert_eq!(room_now.path, format!("{}/{}", moved.path, room.id));
    assert_eq!(room_now.depth, 2);
    let dev_now = s
        .devices()
        .get_device(req(T, pb::GetDeviceRequest { id: dev.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        dev_now.customer_id, c2.id,
        "devices follow their asset's customer"
    );
    assert_eq!(dev_now.version, 2);

    // To the root of the same (new) customer, then a cycle is refused.
    let rooted = s
        .assets()
        .move_asset(req(
            T,
            pb::MoveAssetRequest {
                id: floor.id.clone(),
                destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
                new_customer_id: None,
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rooted.parent_asset_id, None);
    assert_eq!(rooted.path, format!("/{T}/{}/{}", c2.id, floor.id));
    let cycle = s
        .assets()
        .move_asset(req(
            T,
            pb::MoveAssetRequest {
                id: floor.id.clone(),
                destination: Some(pb::move_asset_request::Destination::NewParentAssetId(
                    room.id.clone(),
                )),
                new_customer_id: None,
                expected_version: None,
            },
        ))
        .await;
    assert_code(cycle, Code::FailedPrecondition, "HIERARCHY_CYCLE");
    // Back to the first customer as a root, naming it explicitly.
    let back = s
        .assets()
        .move_asset(req(
            T,
            pb::MoveAssetRequest {
                id: floor.id.clone(),
                destination: Some(pb::move_asset_request::Destination::ToRoot(true)),
                new_customer_id: Some(c1.id.clone()),
                expected_version: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.customer_id, c1.id);
    let dev_back = s
        .devices()
        .get_device(req(T, pb::GetDeviceRequest { id: dev.id }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dev_back.customer_id, c1.id);
}
